"""Tests for medvision.heads: hand-computed losses, HOD scores, HET/HET-XL Monte-Carlo behaviour, registry.

Expected values are worked out here with ``math`` / ``numpy`` (and, for the heteroscedastic heads,
exact Gauss-Hermite quadrature of the one-dimensional Gaussian expectations), never by calling the
head's own code.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medvision.heads import (
    Head,
    HeadConfigError,
    HeadOutput,
    HETHead,
    HETXLHead,
    HODHead,
    create_head,
    list_heads,
    register_head,
)

# ---------------------------------------------------------------------------------------------
# helpers (plain numpy / math)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -z))


def _softplus(z: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, z)


_GH_X, _GH_W = np.polynomial.hermite.hermgauss(120)


def _gauss_sigmoid(mean: np.ndarray, var: np.ndarray, tau: float) -> np.ndarray:
    """E[sigmoid(X / tau)] for X ~ N(mean, var), by Gauss-Hermite quadrature (exact to ~1e-10 here)."""
    x = mean[..., None] + np.sqrt(2.0 * var)[..., None] * _GH_X
    return (_GH_W * _sigmoid(x / tau)).sum(-1) / math.sqrt(math.pi)


def _identity_linear_head(name: str, num_logits: int, num_classes: int, **options) -> Head:
    """A head whose linear layer passes its input through, so features == logits."""
    head = create_head(name, num_logits, num_classes, **options)
    assert head.num_outputs == num_logits
    with torch.no_grad():
        head.fc.weight.copy_(torch.eye(num_logits))
        head.fc.bias.zero_()
    return head


# ---------------------------------------------------------------------------------------------
# hand-computed losses


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_linear_loss_is_label_smoothed_cross_entropy(smoothing: float) -> None:
    rows = [[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]]
    targets = [0, 1]
    head = _identity_linear_head("linear", 3, 3, label_smoothing=smoothing)
    out = head(torch.tensor(rows))
    expected = 0.0
    for z, y in zip(rows, targets, strict=True):
        log_norm = math.log(sum(math.exp(v) for v in z))
        nll = [log_norm - v for v in z]
        expected += (1 - smoothing) * nll[y] + smoothing * sum(nll) / len(z)
    expected /= len(rows)
    loss = head.loss(out, torch.tensor(targets))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    np.testing.assert_allclose(_np(out.probs), _softmax(np.array(rows)), rtol=1e-6)


def test_multilabel_loss_is_binary_cross_entropy() -> None:
    rows = [[2.0, -1.0, 0.0], [-3.0, 0.5, 4.0]]
    targets = [[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]
    head = _identity_linear_head("multilabel", 3, 3)
    out = head(torch.tensor(rows))
    terms = []
    for z_row, y_row in zip(rows, targets, strict=True):
        for z, y in zip(z_row, y_row, strict=True):
            p = 1 / (1 + math.exp(-z))
            terms.append(-(y * math.log(p) + (1 - y) * math.log(1 - p)))
    loss = head.loss(out, torch.tensor(targets))
    assert loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-6)
    assert head.multilabel


@pytest.mark.parametrize("lam", [0.1, 0.5, 1.0])
def test_hod_loss_is_fine_plus_lambda_coarse_for_inlier_and_outlier(lam: float) -> None:
    # K = 2 inlier classes (0, 1), M = 2 training outlier conditions (2, 3).
    rows = [[1.0, 2.0, 0.5, -1.0], [0.3, -0.2, 1.5, 0.7]]
    targets = [1, 3]  # an inlier, then an outlier
    head = _identity_linear_head("hod", 4, 2, num_outlier_classes=2, coarse_weight=lam)

    def by_hand(z: list[float], y: int) -> float:
        e = [math.exp(v) for v in z]
        p = [v / sum(e) for v in e]
        p_out = p[2] + p[3]
        fine = -math.log(p[y])
        coarse = -math.log(p_out) if y >= 2 else -math.log(1 - p_out)
        return fine + lam * coarse

    for z, y in zip(rows, targets, strict=True):
        out = head(torch.tensor([z]))
        assert head.loss(out, torch.tensor([y])).item() == pytest.approx(by_hand(z, y), rel=1e-6)
    batch = head.loss(head(torch.tensor(rows)), torch.tensor(targets))
    assert batch.item() == pytest.approx(sum(map(by_hand, rows, targets)) / 2, rel=1e-6)


def test_het_loss_is_clipped_nll_of_averaged_probabilities() -> None:
    head = create_head("het", 4, 3)
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.0, 1.0, 0.0]])
    out = HeadOutput(logits=probs.clamp_min(1e-7).log(), probs=probs)
    expected = (-math.log(0.7) - math.log(1e-7)) / 2  # the zero probability is clipped at 1e-7
    assert head.loss(out, torch.tensor([0, 0])).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", ["het", "hetxl"])
def test_sigmoid_variant_loss_is_clipped_bce_of_averaged_probabilities(name: str) -> None:
    head = create_head(name, 4, 2, multilabel=True)
    probs = torch.tensor([[0.9, 0.0], [1.0, 0.3]])
    out = HeadOutput(logits=torch.zeros(2, 2), probs=probs)
    target = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    terms = [-math.log(0.9), -math.log(1e-7), -math.log(1e-7), -math.log(0.7)]
    assert head.loss(out, target).item() == pytest.approx(sum(terms) / 4, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# HOD scores and predictions


def test_hod_ood_score_is_outlier_mass_and_prediction_uses_inlier_logits_only() -> None:
    head = _identity_linear_head("hod", 4, 2, num_outlier_classes=2)
    # Row 0: an outlier logit is the largest overall, but inlier class 1 beats inlier class 0.
    # Row 1: huge logits must not overflow.
    rows = np.array([[1.0, 2.0, 5.0, 0.5], [1000.0, 0.0, 1000.0, 0.0]])
    out = head(torch.tensor(rows, dtype=torch.float32))
    full = _softmax(rows)
    np.testing.assert_allclose(_np(out.ood_score), full[:, 2:].sum(-1), rtol=1e-5)
    np.testing.assert_allclose(_np(out.probs), full[:, :2] / full[:, :2].sum(-1, keepdims=True), rtol=1e-5)
    np.testing.assert_allclose(_np(HODHead.full_probs(out)), full, rtol=1e-5)
    assert full[0].argmax() == 2  # the full softmax would pick an outlier class ...
    assert out.probs.argmax(-1).tolist() == [1, 0]  # ... the inlier prediction looks at K logits only
    assert out.logits.shape == (2, 4) and head.num_outputs == 4 and head.num_classes == 2


# ---------------------------------------------------------------------------------------------
# HET / HET-XL: no-noise limit, Monte-Carlo convergence, temperature, gradients

_PHI = torch.tensor([[1.0, 2.0, 0.5], [0.3, 0.1, 1.2]])  # positive, so W_d = -100 gives d = 1e-3


def _silence(head: Head) -> None:
    """V = 0 and d at its 1e-3 floor: softplus(-100 * positive) is ~0."""
    with torch.no_grad():
        head.factor_loading.weight.zero_()
        head.diag_scale.weight.fill_(-100.0)


@pytest.mark.parametrize("multilabel", [False, True])
def test_het_without_noise_equals_plain_softmax_or_sigmoid(multilabel: bool) -> None:
    torch.manual_seed(0)
    head = HETHead(3, 4, rank=3, eval_samples=1000, multilabel=multilabel).eval()
    _silence(head)
    mu = _np(_PHI) @ _np(head.loc.weight).T + _np(head.loc.bias)
    out = head(_PHI, generator=torch.Generator().manual_seed(1))
    expected = _sigmoid(mu) if multilabel else _softmax(mu)
    np.testing.assert_allclose(_np(out.probs), expected, atol=1e-4)
    # Restoring the noise moves the estimate away: the comparison above is not vacuous.
    with torch.no_grad():
        head.diag_scale.weight.fill_(1.0)
    noisy = head(_PHI, generator=torch.Generator().manual_seed(1))
    assert np.abs(_np(noisy.probs) - expected).max() > 1e-2


@pytest.mark.parametrize("multilabel", [False, True])
def test_hetxl_without_noise_equals_tempered_softmax_or_sigmoid(multilabel: bool) -> None:
    torch.manual_seed(0)
    head = HETXLHead(3, 4, rank=3, eval_samples=1000, multilabel=multilabel).eval()
    _silence(head)
    tau = (0.05 + 5.0) / 2  # the learned temperature's starting value
    mu = _np(_PHI) @ _np(head.fc.weight).T + _np(head.fc.bias)
    out = head(_PHI, generator=torch.Generator().manual_seed(1))
    expected = _sigmoid(mu / tau) if multilabel else _softmax(mu / tau)
    np.testing.assert_allclose(_np(out.probs), expected, atol=1e-4)
    with torch.no_grad():
        head.diag_scale.weight.fill_(1.0)
        head.fc.weight.mul_(10.0)
    noisy = head(_PHI, generator=torch.Generator().manual_seed(1))
    mu = _np(_PHI) @ _np(head.fc.weight).T + _np(head.fc.bias)
    expected = _sigmoid(mu / tau) if multilabel else _softmax(mu / tau)
    assert np.abs(_np(noisy.probs) - expected).max() > 1e-2


def _het_exact(head: HETHead, phi: np.ndarray) -> np.ndarray:
    """Exact E[softmax] (K = 2) or E[sigmoid] per label, from the head's weights and the spec's formulas."""
    k, r, tau = head.num_classes, head.rank, head.options.temperature
    mu = phi @ _np(head.loc.weight).T + _np(head.loc.bias)
    v = (phi @ _np(head.factor_loading.weight).T).reshape(len(phi), k, r)
    d = _softplus(phi @ _np(head.diag_scale.weight).T) + 1e-3
    if head.multilabel:
        return _gauss_sigmoid(mu, (v**2).sum(-1) + d**2, tau)
    # softmax over two logits = sigmoid of their difference, which is Gaussian.
    var = ((v[:, 0] - v[:, 1]) ** 2).sum(-1) + d[:, 0] ** 2 + d[:, 1] ** 2
    p0 = _gauss_sigmoid(mu[:, 0] - mu[:, 1], var, tau)
    return np.stack([p0, 1 - p0], -1)


def _hetxl_exact(head: HETXLHead, phi: np.ndarray) -> np.ndarray:
    dim, r = head.in_features, head.rank
    lo, hi = head.options.tau_lo, head.options.tau_hi
    tau = lo + (hi - lo) * _sigmoid(_np(head.temperature_logit))
    w, b = _np(head.fc.weight), _np(head.fc.bias)
    v = (phi @ _np(head.factor_loading.weight).T).reshape(len(phi), dim, r)
    d = _softplus(phi @ _np(head.diag_scale.weight).T) + 1e-3

    def variance(direction: np.ndarray) -> np.ndarray:  # direction^T (V V^T + diag(d^2)) direction
        return (np.einsum("bdr,d->br", v, direction) ** 2).sum(-1) + (d**2 * direction**2).sum(-1)

    mu = phi @ w.T + b
    if head.multilabel:
        return np.stack([_gauss_sigmoid(mu[:, j], variance(w[j]), tau) for j in range(len(w))], -1)
    p0 = _gauss_sigmoid(mu[:, 0] - mu[:, 1], variance(w[0] - w[1]), tau)
    return np.stack([p0, 1 - p0], -1)


@pytest.mark.parametrize("cls", [HETHead, HETXLHead])
def test_scale_floor_keeps_some_noise_when_softplus_is_zero(cls: type[Head]) -> None:
    """d = softplus(.) + 1e-3: at a tiny temperature even that floor visibly smooths the prediction."""
    phi = _PHI[:1]  # mu_0 - mu_1 is set to 1e-3 below, the size of the floor
    if cls is HETHead:
        head = HETHead(3, 2, rank=2, eval_samples=20000, temperature=1e-3)
        layer = head.loc
    else:
        head = HETXLHead(3, 2, rank=2, eval_samples=20000, tau_lo=1e-3, tau_hi=1.0)
        layer = head.fc
        with torch.no_grad():
            head.temperature_logit.fill_(-1e6)  # tau = tau_lo
    _silence(head)
    with torch.no_grad():
        layer.weight.zero_()
        if cls is HETXLHead:
            layer.weight[0, 0] = 1.0  # noise reaches the logits through W: one unit direction
        layer.bias.copy_(torch.tensor([1e-3 - float(phi[0] @ layer.weight[0]), 0.0]))
    exact = (_het_exact if cls is HETHead else _hetxl_exact)(head, _np(phi))
    noiseless = 1 / (1 + math.exp(-1.0))  # sigmoid(1e-3 / 1e-3)
    assert abs(exact[0, 0] - noiseless) > 0.03
    with torch.no_grad():
        probs = head.eval()(phi, generator=torch.Generator().manual_seed(0)).probs
    assert probs[0, 0].item() == pytest.approx(exact[0, 0], abs=5e-3)


@pytest.mark.parametrize(
    ("cls", "multilabel"), [(HETHead, False), (HETHead, True), (HETXLHead, False), (HETXLHead, True)]
)
def test_monte_carlo_estimate_converges_to_exact_expectation(cls: type[Head], multilabel: bool) -> None:
    torch.manual_seed(0)
    k = 3 if multilabel else 2
    extra = {"temperature": 0.7} if cls is HETHead else {}
    reference = cls(4, k, rank=3, multilabel=multilabel, **extra)
    if cls is HETXLHead:
        with torch.no_grad():
            reference.temperature_logit.fill_(-1.5)  # tau ~ 0.91: exercise the temperature too
            reference.fc.weight.mul_(4.0)
    phi = torch.randn(48, 4)
    exact = (_het_exact if cls is HETHead else _hetxl_exact)(reference, _np(phi))
    assert exact.std() > 0.05  # the noise matters: exact differs from example to example
    errors = []
    for samples in (10, 100, 20000):
        # Small chunks: the 20000-sample estimate is averaged over many chunks.
        head = cls(4, k, rank=3, multilabel=multilabel, eval_samples=samples, chunk_elements=1 << 16, **extra)
        head.load_state_dict(reference.state_dict())
        with torch.no_grad():
            probs = head.eval()(phi, generator=torch.Generator().manual_seed(samples)).probs
        errors.append(np.abs(_np(probs) - exact).mean())
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 4e-3


def test_estimate_is_reproducible_with_a_generator() -> None:
    head = HETHead(3, 4, num_samples=50)
    a = head(_PHI, generator=torch.Generator().manual_seed(7)).probs
    b = head(_PHI, generator=torch.Generator().manual_seed(7)).probs
    c = head(_PHI, generator=torch.Generator().manual_seed(8)).probs
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_learned_temperature_starts_midway_and_stays_within_bounds() -> None:
    assert HETXLHead(3, 2).temperature.item() == pytest.approx((0.05 + 5.0) / 2)
    head = HETXLHead(3, 2, tau_lo=0.5, tau_hi=2.0, num_samples=16)
    assert head.temperature.item() == pytest.approx(1.25)
    target = torch.tensor([0, 1])
    for lr in (1e4, -1e4):  # shove the temperature hard one way, then the other
        opt = torch.optim.SGD([head.temperature_logit], lr=abs(lr), maximize=lr < 0)
        for _ in range(5):
            opt.zero_grad()
            head.loss(head(_PHI), target).backward()
            opt.step()
            assert 0.5 <= head.temperature.item() <= 2.0
        assert head.temperature_logit.item() != 0.0
    with torch.no_grad():
        head.temperature_logit.fill_(1e6)
    assert head.temperature.item() == pytest.approx(2.0)
    with torch.no_grad():
        head.temperature_logit.fill_(-1e6)
    assert head.temperature.item() == pytest.approx(0.5)


@pytest.mark.parametrize("cls", [HETHead, HETXLHead])
def test_gradients_reach_location_factors_and_scales(cls: type[Head]) -> None:
    torch.manual_seed(0)
    head = cls(3, 4, rank=2, num_samples=64, chunk_elements=256)  # several checkpointed chunks
    head.loss(head(_PHI), torch.tensor([0, 3])).backward()
    names = {"factor_loading.weight", "diag_scale.weight"}
    names |= {"loc.weight", "loc.bias"} if cls is HETHead else {"fc.weight", "fc.bias", "temperature_logit"}
    grads = dict(head.named_parameters())
    assert set(grads) == names
    for name in names:
        g = grads[name].grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name


@pytest.mark.parametrize("cls", [HETHead, HETXLHead])
def test_checkpointed_gradient_matches_finite_difference(cls: type[Head]) -> None:
    torch.manual_seed(0)
    head = cls(3, 3, rank=2, num_samples=200, chunk_elements=300)
    param = head.loc.bias if cls is HETHead else head.temperature_logit
    target = torch.tensor([2, 1])

    def loss() -> torch.Tensor:  # the same seed, so the loss is a smooth function of the parameters
        return head.loss(head(_PHI, generator=torch.Generator().manual_seed(5)), target)

    loss().backward()
    analytic = param.grad.reshape(-1)[0].item()
    h = 1e-2
    with torch.no_grad():
        param.view(-1)[0] += h
        up = loss().item()
        param.view(-1)[0] -= 2 * h
        down = loss().item()
    assert analytic == pytest.approx((up - down) / (2 * h), rel=2e-2, abs=1e-4)
    assert abs(analytic) > 1e-3


# ---------------------------------------------------------------------------------------------
# registry conformance

_TINY = {
    "hod": {"num_outlier_classes": 2},
    "het": {"rank": 2, "num_samples": 8, "eval_samples": 8},
    "hetxl": {"rank": 2, "num_samples": 8, "eval_samples": 8},
}
_CASES = [(name, _TINY.get(name, {})) for name in list_heads()] + [
    ("het", {**_TINY["het"], "multilabel": True}),
    ("hetxl", {**_TINY["hetxl"], "multilabel": True}),
]


def test_registry_lists_the_five_heads() -> None:
    assert {"linear", "multilabel", "hod", "het", "hetxl"} <= set(list_heads())


@pytest.mark.parametrize(("name", "options"), _CASES, ids=[f"{n}-{o.get('multilabel', '')}" for n, o in _CASES])
def test_every_head_builds_runs_forward_backward_with_contract_shapes(name: str, options: dict) -> None:
    torch.manual_seed(0)
    batch, dim, k = 5, 6, 3
    head = create_head(name, dim, k, **options)
    assert isinstance(head, Head) and head.name == name
    features = torch.randn(batch, dim, requires_grad=True)
    out = head.train()(features)
    assert out.logits.shape == (batch, head.num_outputs)
    assert out.probs.shape == (batch, head.num_classes) == (batch, k)
    assert ((out.probs >= 0) & (out.probs <= 1)).all()
    if head.multilabel:
        target = torch.randint(0, 2, (batch, k)).float()
        assert torch.allclose(out.logits.sigmoid(), out.probs, atol=1e-5)
    else:
        target = torch.randint(0, head.num_outputs, (batch,))
        assert torch.allclose(out.probs.sum(-1), torch.ones(batch), atol=1e-5)
        if head.num_outputs == head.num_classes:
            assert torch.allclose(out.logits.softmax(-1), out.probs, atol=1e-5)
    if out.ood_score is not None:
        assert out.ood_score.shape == (batch,)
    loss = head.loss(out, target)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert features.grad is not None and features.grad.abs().sum() > 0
    for pname, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    with torch.no_grad():
        evaluated = head.eval()(features)
    assert evaluated.probs.shape == (batch, k) and not evaluated.probs.requires_grad
    with pytest.raises(ValueError, match=name):
        head.loss(out, target.float()[:, None] if not head.multilabel else target[:, 0].long())


@pytest.mark.parametrize(("name", "options"), _CASES)
def test_a_typo_in_an_option_fails_naming_it(name: str, options: dict) -> None:
    with pytest.raises(HeadConfigError, match="unknown option 'dorpout'"):
        create_head(name, 6, 3, **options, dorpout=0.1)


def test_hod_typo_fails_naming_the_option_and_listing_valid_ones() -> None:
    with pytest.raises(HeadConfigError, match=r"'lamda'.*coarse_weight"):
        create_head("hod", 8, 3, num_outlier_classes=1, lamda=0.5)
    with pytest.raises(HeadConfigError, match="did you mean 'coarse_weight'"):
        create_head("hod", 8, 3, num_outlier_classes=1, coarse_wieght=0.5)


@pytest.mark.parametrize(
    ("name", "options", "needle"),
    [
        ("hod", {}, "num_outlier_classes"),
        ("hod", {"num_outlier_classes": 0}, "num_outlier_classes"),
        ("hetxl", {"tau_lo": 5.0, "tau_hi": 1.0}, "tau_lo"),
        ("linear", {"label_smoothing": 1.0}, "label_smoothing"),
        ("het", {"temperature": 0.0}, "temperature"),
    ],
)
def test_invalid_option_values_fail_naming_the_option(name: str, options: dict, needle: str) -> None:
    with pytest.raises(HeadConfigError, match=needle):
        create_head(name, 8, 3, **options)


def test_bad_sizes_and_unknown_names_fail_clearly() -> None:
    with pytest.raises(HeadConfigError, match="in_features"):
        create_head("linear", 0, 3)
    with pytest.raises(HeadConfigError, match="num_classes"):
        create_head("linear", 8, True)
    with pytest.raises(HeadConfigError, match=r"unknown head 'hetx'.*'hetxl'.*'het'"):
        create_head("hetx", 8, 3)


def test_duplicate_registration_is_an_error_and_keeps_the_original() -> None:
    before = create_head("linear", 4, 2)

    class Impostor(Head):
        pass

    with pytest.raises(HeadConfigError, match="already registered"):
        register_head("linear")(Impostor)
    assert type(create_head("linear", 4, 2)) is type(before)
    with pytest.raises(TypeError, match="Head subclasses"):
        register_head("not-a-head-for-tests")(dict)  # type: ignore[arg-type]
    assert "not-a-head-for-tests" not in list_heads()


def test_targets_are_validated() -> None:
    hod = create_head("hod", 8, 3, num_outlier_classes=2)
    out = hod(torch.randn(2, 8))
    assert torch.isfinite(hod.loss(out, torch.tensor([4, 0])))  # K + M - 1 is the last outlier class
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        hod.loss(out, torch.tensor([5, 0]))
    with pytest.raises(ValueError, match="multi-label"):
        hod.loss(out, torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"\(B, 8\)"):
        hod(torch.randn(2, 7))


# ---------------------------------------------------------------------------------------------
# what a head declares instead of being special-cased by name


class _Cohort:
    def __init__(self, k: int, m: int) -> None:
        self.num_inlier_classes, self.num_outlier_classes = k, m


def test_hod_takes_its_abstention_classes_from_the_cohort_and_refuses_a_mismatch() -> None:
    assert HODHead.cohort_options == {"num_outlier_classes"}
    assert HODHead.options_for_cohort({"coarse_weight": 0.1}, _Cohort(3, 2)) == {
        "coarse_weight": 0.1,
        "num_outlier_classes": 2,
    }
    with pytest.raises(HeadConfigError, match="num_outlier_classes is 3 but the cohort has 2"):
        HODHead.options_for_cohort({"num_outlier_classes": 3}, _Cohort(3, 2))
    with pytest.raises(HeadConfigError, match="needs training outlier conditions"):
        HODHead.options_for_cohort({}, _Cohort(3, 0))
    linear = create_head("linear", 4, 2).options_for_cohort({"label_smoothing": 0.1}, _Cohort(2, 5))
    assert linear == {"label_smoothing": 0.1}  # a head that takes nothing from the cohort


def test_a_head_names_its_own_ood_score_and_the_ood_tables_use_that_name() -> None:
    from test_evaluation_tables import _preds

    from medvision.evaluation.tables import ood_tables
    from medvision.heads import ood_score_names

    assert ood_score_names() == ["hod"] and HODHead.ood_score_name == "hod"
    assert create_head("linear", 4, 2).ood_score_name is None  # no built-in score: post-hoc detectors only
    inliers, outliers = _preds(40, 3, 0), _preds(20, 3, 1)
    for p, level in ((inliers, 0.1), (outliers, 0.9)):
        p.ood_score, p.ood_score_name = np.full(len(p.frame), level), "evidence"
    rows, _, _ = ood_tables(inliers, outliers, {}, n_resamples=10, seed=0)
    names = [r["detector"] for r in rows]
    assert "evidence" in names and "hod" not in names
    assert next(r for r in rows if r["detector"] == "evidence")["auroc"] == 1.0
