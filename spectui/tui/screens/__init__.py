"""Screens: the overview, one matrix in detail, and the modal dialogs."""
