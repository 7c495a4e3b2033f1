"""Entry points: the `fraudctl` command line, the demo and the data commands. The top floor: it may
import every package of the project, and nothing imports it."""
