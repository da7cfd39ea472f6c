"""The example's check: it needs the declared `greeting` dependency."""

from greeting import greet

print(greet("autopack"))
