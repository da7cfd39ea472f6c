"""A tiny dependency declared by the example project."""


def greet(name: str) -> str:
    """A friendly line."""
    return f"hello, {name}"
