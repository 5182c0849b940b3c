"""gatekit.distillation_loss against a plain-Python oracle, gradcheck, half precision, errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import gatekit
from gatekit import GatekitError


def _oracle(student: list[list[float]], teacher: list[list[float]], temperature: float) -> float:
    """T^2 * mean_n sum_c p_t log(p_t / p_s), softmax written out with math.exp."""
    def softmax(row: list[float]) -> list[float]:
        top = max(v / temperature for v in row)
        e = [math.exp(v / temperature - top) for v in row]
        return [v / sum(e) for v in e]

    total = 0.0
    for s_row, t_row in zip(student, teacher):
        ps, pt = softmax(s_row), softmax(t_row)
        total += sum(t * (math.log(t) - math.log(s)) for t, s in zip(pt, ps) if t > 0)
    return temperature**2 * total / len(student)



@settings(deadline=None, max_examples=60)
@given(data=st.data(), n=st.integers(1, 5), temperature=st.floats(0.5, 10.0))
def test_matches_the_oracle(data, n, temperature) -> None:
    c = data.draw(st.integers(2, 6))
    row = st.lists(st.floats(-30, 30, allow_nan=False), min_size=c, max_size=c)
    student = data.draw(st.lists(row, min_size=n, max_size=n))
    teacher = data.draw(st.lists(row, min_size=n, max_size=n))
    got = gatekit.distillation_loss(torch.tensor(student, dtype=torch.float64),
                                    torch.tensor(teacher, dtype=torch.float64), temperature)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(_oracle(student, teacher, temperature), rel=1e-9, abs=1e-12)


def test_zero_when_equal_and_positive_otherwise() -> None:
    torch.manual_seed(0)
    t = torch.randn(8, 10)
    assert gatekit.distillation_loss(t.clone(), t).item() == pytest.approx(0.0, abs=1e-6)
    assert gatekit.distillation_loss(t + torch.randn(8, 10), t).item() > 1e-3
    # a shift of every logit by a constant leaves the distribution unchanged
    assert gatekit.distillation_loss(t + 5.0, t).item() == pytest.approx(0.0, abs=1e-5)


def test_spatial_logits_average_over_positions() -> None:
    torch.manual_seed(1)
    s, t = torch.randn(2, 5, 3, 4, dtype=torch.float64), torch.randn(2, 5, 3, 4, dtype=torch.float64)
    rows_s = s.movedim(1, -1).reshape(-1, 5).tolist()
    rows_t = t.movedim(1, -1).reshape(-1, 5).tolist()
    assert gatekit.distillation_loss(s, t, 2.0).item() == pytest.approx(_oracle(rows_s, rows_t, 2.0))


def test_gradcheck_and_teacher_gets_no_gradient() -> None:
    torch.manual_seed(2)
    s = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: gatekit.distillation_loss(a, t, 3.0), (s,))
    gatekit.distillation_loss(s, t, 3.0).backward()
    assert t.grad is None and s.grad is not None
    # d/ds of T^2 KL / N = T (p_s - p_t) / N: the known closed form
    want = 3.0 * (torch.softmax(s / 3.0, 1) - torch.softmax(t / 3.0, 1)) / 4
    torch.testing.assert_close(s.grad, want.detach())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_finite_and_close_to_float32(dtype) -> None:
    torch.manual_seed(3)
    # large logits, near the float16 limit, are where a half-precision softmax overflows
    s = (torch.randn(16, 10) * 3e4).clamp(-6e4, 6e4)
    t = (torch.randn(16, 10) * 3e4).clamp(-6e4, 6e4)
    for scale in (1.0, 1e-3):
        sh = (s * scale).to(dtype).requires_grad_(True)
        th = (t * scale).to(dtype)
        loss = gatekit.distillation_loss(sh, th, 4.0)
        loss.backward()
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        assert torch.isfinite(sh.grad).all() and sh.grad.dtype == dtype
        ref = gatekit.distillation_loss(sh.detach().float(), th.float(), 4.0)
        torch.testing.assert_close(loss, ref)


@pytest.mark.parametrize(
    ("student", "teacher", "temperature", "match"),
    [
        (torch.zeros(2, 3), torch.zeros(2, 4), 4.0, r"one shape, got \(2, 3\) and \(2, 4\)"),
        (torch.zeros(3), torch.zeros(3), 4.0, r"shape \(N, num_classes\), got \(3,\)"),
        (torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3), 4.0, "floating-point.*int64"),
        ([[0.0]], torch.zeros(1, 1), 4.0, "floating-point tensor, got list"),
        (torch.zeros(2, 3), torch.zeros(2, 3), 0.0, "temperature > 0"),
        (torch.zeros(2, 3), torch.zeros(2, 3), float("inf"), "temperature > 0"),
    ],
)
def test_bad_input(student, teacher, temperature, match) -> None:
    with pytest.raises(GatekitError, match=match):
        gatekit.distillation_loss(student, teacher, temperature)
