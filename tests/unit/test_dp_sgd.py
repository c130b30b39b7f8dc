"""Record-level DP-SGD: per-example clipping against an independent per-example
computation, the noise's calibration, the lots, and each client's accountant."""

from __future__ import annotations

import math

import dp_accounting
import pytest
import torch
from dp_accounting import rdp
from scipy import stats

from fedllm.client.settings import ClientConfig
from fedllm.client.train import train_locally
from fedllm.config import MethodConfig, ModelConfig
from fedllm.data import Example, collate
from fedllm.model.load import load_base_model
from fedllm.model.methods import get_method
from fedllm.privacy.accountant import RDP_ORDERS, PrivacyConfigError
from fedllm.privacy.local_dp.dpsgd import DPSGDHook
from fedllm.privacy.plan import plan_local
from fedllm.privacy.settings import PrivacyConfig


def tiny_model(method: str = "lora") -> torch.nn.Module:
    torch.manual_seed(0)  # peft initialises its tensors from the global generator
    base = load_base_model(ModelConfig(name="tiny"), seed=0)
    cfg = MethodConfig(kind=method, r=4, target_modules=["q_proj", "v_proj"], num_virtual_tokens=4)
    model = get_method(method).apply(base, cfg)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # LoRA's B starts at zero: move it so every gradient is nonzero
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model


def examples(count: int, seed: int = 0) -> list[Example]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(count):
        length = 5 + i % 4  # different lengths: the batch is padded
        ids = torch.randint(3, 500, (length,), generator=gen).tolist()
        out.append(Example(input_ids=ids, labels=ids))
    return out


def trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def clipped_mean_by_hand(
    model: torch.nn.Module, batch: list[Example], clip: float
) -> list[torch.Tensor]:
    """Each example alone through the model (no padding), its gradient clipped, averaged."""
    params = trainable(model)
    total = [torch.zeros_like(p) for p in params]
    for example in batch:
        ids = torch.tensor([example.input_ids])
        labels = ids.clone()
        labels[:, 0] = -100
        loss = model(input_ids=ids, labels=labels).loss
        grads = torch.autograd.grad(loss, params)
        norm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
        scale = min(1.0, clip / norm)
        for t, g in zip(total, grads, strict=True):
            t.add_(g, alpha=scale)
    return [t / len(batch) for t in total]


def hook_gradients(
    model: torch.nn.Module, batch: list[Example], hook: DPSGDHook
) -> list[torch.Tensor]:
    params = trainable(model)
    hook.begin([], params, {})
    collated = collate(batch, pad_id=0)
    collated["labels"][:, 0] = -100

    def loss_of(b: dict[str, torch.Tensor]) -> torch.Tensor:
        out: torch.Tensor = model(**b).loss
        return out

    hook.compute_gradients(collated, loss_of)
    hook.on_gradients(params)
    return [p.grad.clone() for p in params if p.grad is not None]


@pytest.mark.parametrize("method", ["lora", "prompt"])
@pytest.mark.parametrize("clip", [1e-3, 1e6])
def test_without_noise_the_step_is_the_mean_of_clipped_per_example_gradients(
    method: str, clip: float
) -> None:
    model = tiny_model(method)
    model.eval()  # no dropout: the two computations see the same network
    batch = examples(4)
    expected = clipped_mean_by_hand(model, batch, clip)
    got = hook_gradients(model, batch, DPSGDHook(clip, 0.0, lot=4, micro_batches=1, seed=0))
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-9)
    if clip < 1:  # every example was clipped: the step's norm is at most the clip
        norm = math.sqrt(sum(float(g.pow(2).sum()) for g in got))
        assert norm <= clip * (1 + 1e-5)


def test_the_noise_on_the_mean_has_std_z_clip_over_the_lot() -> None:
    z, clip, lot = 1.7, 0.3, 8
    params = [torch.nn.Parameter(torch.zeros(300, 300))]
    hook = DPSGDHook(clip, z, lot=lot, micro_batches=2, seed=9)
    hook.begin([], params, {})
    hook.on_gradients(params)  # no example folded: the gradient is the noise alone
    noise = params[0].grad.double()
    statistic = float((noise / (z * clip / lot)).pow(2).sum())
    assert 0.001 < stats.chi2.sf(statistic, noise.numel()) < 0.999
    wrong = float((noise / (1.01 * z * clip / lot)).pow(2).sum())
    assert stats.chi2.cdf(wrong, noise.numel()) < 1e-6


def test_lots_are_fixed_size_uniform_draws_split_into_micro_batches() -> None:
    data = examples(10)
    hook = DPSGDHook(1.0, 1.0, lot=6, micro_batches=2, seed=0)
    lots = hook.batches(data, 3, seed=4)
    counts = dict.fromkeys(range(10), 0)
    for _ in range(3000):
        first, second = next(lots), next(lots)
        assert len(first) == len(second) == 3
        ids = [data.index(e) for e in first + second]
        assert len(set(ids)) == 6  # without replacement within a lot
        for i in ids:
            counts[i] += 1
    expected = 3000 * 0.6
    statistic = sum((c - expected) ** 2 / (expected * 0.4) for c in counts.values())
    assert 0.001 < stats.chi2.sf(statistic, 10) < 0.999


def test_a_dp_sgd_round_trains_and_is_seeded() -> None:
    cfg = ClientConfig(local_steps=3, batch_size=2, lr=1e-2)
    data = examples(12)

    def train(seed: int) -> dict[str, torch.Tensor]:
        model = tiny_model()
        hook = DPSGDHook(0.5, 1.0, lot=2, micro_batches=1, seed=seed)
        metrics = train_locally(model, data, cfg, 3, seed, 0, [hook])
        assert metrics["steps"] == 3 and math.isfinite(metrics["train_loss"])
        return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    first, again, other = train(1), train(1), train(2)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def direct_epsilon(z: float, n: int, lot: int, steps: int, delta: float) -> float:
    """Lots drawn without replacement under replace-one: a record's clipped gradient
    replaced by its opposite moves the lot's sum by 2C, so the Gaussian gets z / 2."""
    accountant = rdp.RdpAccountant(
        orders=list(RDP_ORDERS), neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE
    )
    gaussian = dp_accounting.GaussianDpEvent(z / 2)
    event = dp_accounting.SampledWithoutReplacementDpEvent(n, lot, gaussian)
    accountant.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    return float(accountant.get_epsilon(delta))


def test_a_client_s_epsilon_is_dp_accounting_s_for_its_lots() -> None:
    privacy = PrivacyConfig(dp="local", clip_norm=1.0, noise_multiplier=1.2)
    plan = plan_local(privacy, examples=50, lot=5, steps_per_round=4, rounds=10)
    assert plan.epsilon(12) == pytest.approx(direct_epsilon(1.2, 50, 5, 12, 1e-5), rel=1e-9)
    bigger = plan.for_client(200, 5)
    assert bigger.epsilon(12) < plan.epsilon(12)  # a lower sampling rate spends less
    derived = plan_local(PrivacyConfig(dp="local", clip_norm=1.0, target_epsilon=3.0), 50, 5, 4, 10)
    assert 2.97 < derived.epsilon(40) <= 3.0  # the worst case: trained in all 10 rounds
    with pytest.raises(PrivacyConfigError, match="one round of DP-SGD"):
        plan_local(
            PrivacyConfig(dp="local", clip_norm=1.0, noise_multiplier=0.3, target_epsilon=0.5),
            50,
            5,
            4,
            10,
        )
