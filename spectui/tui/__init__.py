"""The Textual inspector: screens and widgets render the Inspector's results and send requests."""
