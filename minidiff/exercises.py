"""Self-checking exercises: ``check_<name>(fn)`` runs a student's function on test cases against
a reference answer and prints one clear verdict; it returns True only when every case passes.

The pattern every chapter uses: the student's cell defines a function whose body is
``raise NotImplementedError`` until they fill it in; the next cell calls ``check_<name>(fn)``,
which reports "not done yet" instead of crashing, so the notebook always runs top to bottom.
Reference solutions live in ``minidiff.solutions`` and CI runs them through the same checks.
"""
import torch

from . import solutions


def _verdict(name: str, fn, cases) -> bool:
    """Run ``fn`` on each ``(args, expected, hint)`` case; print ✅, ❌ with the first failure, or ⏳."""
    for args, expected, hint in cases:
        try:
            got = fn(*args)
        except NotImplementedError:
            print(f"⏳ {name}: not implemented yet — replace `raise NotImplementedError` with your code.")
            return False
        except Exception as err:  # a student's bug is reported, not raised, so the notebook goes on
            print(f"❌ {name}: your function raised {type(err).__name__}: {err}")
            return False
        if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            print(f"❌ {name}: expected a tensor of shape {tuple(expected.shape)}, got {shape}.")
            return False
        if not torch.allclose(got.float(), expected.float(), atol=1e-5, rtol=1e-4):
            error = (got.float() - expected.float()).abs().max().item()
            print(f"❌ {name}: wrong values (largest error {error:.3g}). Hint: {hint}")
            return False
    print(f"✅ {name}: all {len(cases)} checks pass.")
    return True


def check_mosaic(fn) -> bool:
    """``fn(images, block)``: the article's "mosaic" — average each block×block tile, then paint the
    tile with its average. Images (B, C, H, W) with H and W multiples of block; same shape out."""
    g = torch.Generator().manual_seed(0)
    cases = []
    for shape, block, hint in [((1, 1, 4, 4), 2, "average each 2×2 tile"),
                               ((2, 3, 8, 8), 4, "channels and images are independent"),
                               ((1, 1, 6, 6), 1, "block 1 leaves the image unchanged")]:
        x = torch.rand(shape, generator=g) * 2 - 1
        cases.append(((x, block), solutions.mosaic(x, block), hint))
    return _verdict("mosaic", fn, cases)


def check_add_noise(fn) -> bool:
    """``fn(images, noise, amount)``: blend towards Gaussian noise, keeping the variance of unit data:
    √(1 − amount)·image + √amount·noise, the blend diffusion models use (chapter 04)."""
    g = torch.Generator().manual_seed(1)
    x, noise = torch.rand(2, 1, 5, 5, generator=g) * 2 - 1, torch.randn(2, 1, 5, 5, generator=g)
    cases = [((x, noise, a), solutions.add_noise(x, noise, a), hint) for a, hint in
             [(0.0, "amount 0 is the clean image"), (1.0, "amount 1 is pure noise"),
              (0.3, "use square roots: √(1−a)·image + √a·noise")]]
    return _verdict("add_noise", fn, cases)
