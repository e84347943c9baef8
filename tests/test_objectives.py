import math

import pytest
import torch
import torch.nn.functional as F

from gft_tokens import GFTError
from gft_tokens.conditioning import (beta_to_cfg_scale, beta_to_var_cfg, cfg_scale_to_beta, check_beta,
                                     var_cfg_to_beta)
from gft_tokens.families import build_model
from gft_tokens.objectives import (HeadInputs, cfg_loss, fused_mixed_cross_entropy, gft_loss,
                                   mixed_cross_entropy)

V, N, B = 32, 5, 4


class Recorder(torch.nn.Module):
    """A logits function over free parameters that records how it was called."""

    def __init__(self):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(11, N, V))
        self.beta_w = torch.nn.Parameter(torch.randn(N, V))
        self.calls = []

    def forward(self, cond, beta):
        self.calls.append({"cond": cond.clone(), "beta": None if beta is None else beta.clone(),
                           "training": self.training, "grad": torch.is_grad_enabled()})
        out = self.table[cond]
        return out if beta is None else out + beta[:, None, None] * self.beta_w


def test_gft_loss_equals_hand_computation():
    torch.manual_seed(0)
    f = Recorder()
    targets = torch.randint(V, (B, N))
    labels = torch.tensor([1, 2, 3, 4])
    beta = torch.tensor([0.2, 0.5, 0.9, 1.0])
    drop = torch.zeros(B, dtype=torch.bool)
    out = gft_loss(f, targets, labels, null_cond=10, module=f, beta=beta, drop=drop)
    ls = f.table[labels] + beta[:, None, None] * f.beta_w
    lu = f.table[torch.full((B,), 10)] + f.beta_w
    total = 0.0
    for b in range(B):
        for n in range(N):
            z = beta[b] * ls[b, n] + (1 - beta[b]) * lu[b, n]
            total += -(z[targets[b, n]] - torch.logsumexp(z, -1))
    assert torch.allclose(out.loss, total / (B * N), atol=1e-5)


def test_unconditional_branch_gets_no_gradient_and_runs_in_eval_mode():
    torch.manual_seed(0)
    f = Recorder().train()
    targets = torch.randint(V, (B, N))
    out = gft_loss(f, targets, torch.tensor([0, 1, 2, 3]), null_cond=10, module=f, drop_prob=0.0)
    out.loss.backward()
    uncond, cond = f.calls
    assert uncond["training"] is False and uncond["grad"] is False
    assert torch.equal(uncond["cond"], torch.full((B,), 10)) and torch.equal(uncond["beta"], torch.ones(B))
    assert cond["training"] is True and cond["grad"] is True
    assert f.training  # restored
    assert f.table.grad[10].abs().sum() == 0  # the null row is only used by the stop-gradient branch
    assert f.table.grad[:4].abs().sum() > 0


def test_beta_one_is_plain_conditional_cross_entropy():
    torch.manual_seed(0)
    f = Recorder()
    targets = torch.randint(V, (B, N))
    labels = torch.tensor([0, 1, 2, 3])
    out = gft_loss(f, targets, labels, null_cond=10, module=f, beta=torch.ones(B), drop=torch.zeros(B, dtype=bool))
    expected = F.cross_entropy((f.table[labels] + f.beta_w).flatten(0, 1), targets.flatten())
    assert torch.allclose(out.loss, expected, atol=1e-6)
    assert torch.allclose(out.cond_loss, expected, atol=1e-6)


def test_dropped_rows_get_null_condition_and_beta_input_one():
    f = Recorder()
    targets = torch.randint(V, (B, N))
    beta = torch.tensor([0.3, 0.4, 0.5, 0.6])
    drop = torch.tensor([False, True, False, True])
    out = gft_loss(f, targets, torch.tensor([5, 6, 7, 8]), null_cond=10, module=f, beta=beta, drop=drop)
    cond_call = f.calls[1]
    assert cond_call["cond"].tolist() == [5, 10, 7, 10]
    assert cond_call["beta"].tolist() == pytest.approx([0.3, 1.0, 0.5, 1.0])
    assert out.beta.tolist() == pytest.approx(beta.tolist())  # the mixing weight stays the sampled β


def test_random_draws_beta_uniform_and_drop_rate():
    f = Recorder()
    g = torch.Generator().manual_seed(0)
    n = 4000
    targets = torch.randint(V, (n, N))
    out = gft_loss(f, targets, torch.zeros(n, dtype=torch.long), null_cond=10, module=f, generator=g)
    assert 0.0 <= out.beta.min() and out.beta.max() < 1.0
    assert abs(out.beta.mean().item() - 0.5) < 0.03
    assert abs(out.dropped.float().mean().item() - 0.1) < 0.02


def test_cfg_loss_drops_labels_and_has_no_beta():
    f = Recorder()
    targets = torch.randint(V, (B, N))
    drop = torch.tensor([True, False, False, False])
    out = cfg_loss(f, targets, torch.tensor([1, 2, 3, 4]), null_cond=10, drop=drop)
    assert len(f.calls) == 1 and f.calls[0]["beta"] is None
    assert f.calls[0]["cond"].tolist() == [10, 2, 3, 4]
    expected = F.cross_entropy(f.table[torch.tensor([10, 2, 3, 4])].flatten(0, 1), targets.flatten())
    assert torch.allclose(out.loss, expected)


@pytest.mark.parametrize("vocab", [64, 16384])
@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("keep_bytes", [0, 2**30])  # recompute logits in backward / keep the gradient
@pytest.mark.parametrize("mixed", [True, False])
def test_fused_loss_matches_naive_value_and_gradients(vocab, with_mask, keep_bytes, mixed):
    from gft_tokens.nn import OutputHead

    torch.manual_seed(0)
    d, n = 16, 7
    head = OutputHead(d, vocab, bias=True)
    torch.nn.init.normal_(head.weight, std=0.5)
    torch.nn.init.normal_(head.bias, std=0.5)
    h_s = torch.randn(3, n, d, requires_grad=True)
    h_u = torch.randn(3, n, d)
    beta = torch.tensor([0.1, 0.6, 1.0])
    targets = torch.randint(vocab, (3, n))
    mask = torch.rand(3, n) < 0.6 if with_mask else None

    with torch.no_grad():
        logits_u = head(h_u) if mixed else None
    loss_n, own_n = mixed_cross_entropy(head(h_s), logits_u, beta, targets, mask)
    loss_n.backward()
    expected = [t.grad.clone() for t in (h_s, head.weight, head.bias)]
    h_s.grad = head.weight.grad = head.bias.grad = None
    loss_f, own_f = fused_mixed_cross_entropy(HeadInputs(h_s, head), HeadInputs(h_u, head) if mixed else None,
                                              beta if mixed else None, targets, mask, chunk_rows=4,
                                              keep_bytes=keep_bytes)
    loss_f.backward()
    assert torch.allclose(loss_n, loss_f, atol=1e-5) and torch.allclose(own_n, own_f, atol=1e-5)
    for want, got in zip(expected, (h_s.grad, head.weight.grad, head.bias.grad)):
        assert torch.allclose(want, got, atol=1e-6)


def test_fused_and_naive_agree_on_a_llamagen_model():
    torch.manual_seed(0)
    m = build_model("llamagen", "GPT-nano", vocab_size=128, grid_size=4, num_classes=10,
                    token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0)
    torch.nn.init.normal_(m.output.weight, std=0.05)
    codes = torch.randint(128, (3, 16))
    labels = torch.tensor([1, 2, 3])
    kw = dict(null_cond=10, module=m, beta=torch.tensor([0.2, 0.5, 0.8]), drop=torch.tensor([False, True, False]))
    grads = []
    for fn in (lambda c, b: m(codes, c, b), lambda c, b: m.head_inputs(codes, c, b)):
        m.zero_grad()
        gft_loss(fn, codes, labels, **kw).loss.backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def test_beta_cfg_conversions():
    assert beta_to_cfg_scale(0.5) == 2.0 and cfg_scale_to_beta(4.0) == 0.25
    assert beta_to_var_cfg(0.25) == 3.0 and var_cfg_to_beta(1.0) == 0.5
    assert math.isclose(cfg_scale_to_beta(beta_to_cfg_scale(0.66)), 0.66)
    with pytest.raises(GFTError):
        cfg_scale_to_beta(0.5)
    with pytest.raises(GFTError):
        beta_to_cfg_scale(0.0)


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan"), torch.tensor([0.5, 2.0])])
def test_check_beta_rejects(bad):
    with pytest.raises(GFTError, match="beta"):
        check_beta(bad, 2)
