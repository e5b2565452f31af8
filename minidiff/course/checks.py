"""How every coding exercise is checked: ``verdict`` runs a student's function on test cases and prints
one clear line — ✓, ✗ with the hint for the mistake it made, or … when it is not written yet.

A wrong answer gets the hint for *its* mistake: each check lists the mistakes students make
(``Mistake``: what it is, an answer that makes it, what to change), and when an answer gives exactly
what one of them gives, the verdict names it; an answer wrong in some other way gets the hint of the
case it fails. The checks themselves are in ``exercises`` (chapters 00–04, 06 and 07),
``sampling_exercises`` (chapter 05: the training loss, the DDPM step and the sampling loop) and
``clip_exercises`` (chapter 08: the similarity matrix, the InfoNCE loss and zero-shot reading).
"""
from dataclasses import dataclass

import torch

from minidiff.diffusion.loss import at_step, convert_prediction


@dataclass(frozen=True)
class Mistake:
    what: str   # the mistake, in a few words (named in the verdict)
    fn: object  # an answer that makes it
    hint: str   # what to change


def random_batch(seed: int, n: int = 3):
    """Small test images in [−1, 1] and noise for them, (n, 1, 4, 4) each, from a seed."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 4, 4, generator=g) * 2 - 1, torch.randn(n, 1, 4, 4, generator=g)


def x0_estimate(x_t, t, epsilon, alphas_cumprod):
    """The clean image a noise prediction implies, one t per image (the library's conversion)."""
    return convert_prediction(epsilon, x_t, at_step(alphas_cumprod, t, x_t), "epsilon", "sample")


def _shape_hint(got, expected: torch.Tensor, shape_hint) -> str:
    """What to look at when ``got`` is not a tensor of ``expected``'s shape."""
    if got is None:
        return "your function returned None: did you forget `return`?"
    if not isinstance(got, torch.Tensor):
        return "return a tensor: build the answer from torch operations, not math.* or .item()"
    if shape_hint:
        return shape_hint
    if expected.ndim == 0:
        return "the answer is a single number, a 0-dimensional tensor: finish with .mean() or .sum()"
    return "print the .shape of each intermediate tensor to find the line that changes it"


def _close(a, b) -> bool:
    return (isinstance(a, torch.Tensor) and a.shape == b.shape
            and torch.allclose(a.float(), b.float(), atol=1e-5, rtol=1e-4))


def _diagnose(mistakes, args, got) -> Mistake | None:
    """The known mistake that gives exactly ``got`` on these arguments, if there is one."""
    for mistake in mistakes:
        try:
            if _close(got, mistake.fn(*args)):
                return mistake
        except Exception:  # a mistake that cannot even run on these arguments is not the one made
            continue
    return None


def verdict(name: str, fn, cases, shape_hint: str = None, mistakes=()) -> bool:
    """Run ``fn`` on each ``(args, expected, hint)`` case; print ✓, or ✗ with the first failure and the
    hint for its mistake (one of ``mistakes``, else the case's hint), or … (not done yet).
    ``shape_hint`` is the hint for an answer of the wrong shape (a generic one by default)."""
    for args, expected, hint in cases:
        try:
            got = fn(*args)
        except NotImplementedError:
            print(f"… {name}: not implemented yet — replace `raise NotImplementedError` with your code.")
            return False
        except Exception as err:  # a student's bug is reported, not raised, so the notebook goes on
            print(f"✗ {name}: your function raised {type(err).__name__}: {err}")
            return False
        if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            print(f"✗ {name}: expected a tensor of shape {tuple(expected.shape)}, got {shape}. "
                  f"Hint: {_shape_hint(got, expected, shape_hint)}")
            return False
        if not _close(got, expected):
            error = (got.float() - expected.float()).abs().max().item()
            mistake = _diagnose(mistakes, args, got)
            found = f"it looks like {mistake.what}. Hint: {mistake.hint}" if mistake else f"Hint: {hint}"
            print(f"✗ {name}: wrong values (largest error {error:.3g}); {found}")
            return False
    print(f"✓ {name}: all {len(cases)} checks pass.")
    return True
