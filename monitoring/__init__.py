"""Warehouse sink and live model monitoring (windowed metrics, drift, alerts, reports)."""
