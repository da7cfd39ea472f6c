"""A tiny calculator: the demo repository Autopack runs against."""


def add(a: float, b: float) -> float:
    """Sum of a and b."""
    return a + b


def mean(values: list[float]) -> float:
    """Arithmetic mean; an empty list is an error."""
    if not values:
        raise ValueError("mean of an empty list")
    return sum(values) / len(values)
