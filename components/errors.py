"""Errors a component raises for input it cannot build from (a user's mistake, not a bug)."""


class ComponentInputError(ValueError):
    """The settings ask for something the target cannot give (e.g. more zones than a region has)."""
