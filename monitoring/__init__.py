"""Live model monitoring: windowed metrics, drift, alerts, reports."""
