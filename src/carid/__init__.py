"""carid: identify cars in photos (make, model, year or body type, and where the car is)."""

__version__ = "0.1.0"
