"""Training runs too long for a chapter; each writes a JSON file the chapters load. Run as ``python -m experiments.<name>``."""
