"""Widgets: each renders one view of the Inspector's results."""
