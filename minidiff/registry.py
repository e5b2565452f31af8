"""One way to make a list of things others can add to: recipes, sample sources, demo panels.

    RECIPES = Registry("recipe")

    @RECIPES.register
    def mnist_classifier(fast=False, device="auto"): ...

``RECIPES.lookup(name)`` returns it, or fails with one line that lists what there is.
"""


class Registry(dict):
    """name → function, in the order they were registered."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, fn=None, *, name: str | None = None):
        """Decorator (``@R.register`` or ``@R.register(name="…")``), or a call ``R.register(fn, name=…)``."""
        def add(fn):
            key = name or fn.__name__
            if key in self:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self[key] = fn
            return fn
        return add if fn is None else add(fn)

    def lookup(self, name: str):
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r}; available: {', '.join(sorted(self))}")
        return self[name]
