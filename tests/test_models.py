"""Model behaviours users rely on: the configured cell is the one trained, shapes, batching, learning."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from core.config import ModelConfig, config_from_dict
from core.errors import FramecastError
from family_helpers import CELL_TYPES
from models import ConvLSTMCell, build_model, count_parameters, total_stride

pytestmark = pytest.mark.usefixtures("one_thread")

GATES = {"lstm": 4, "gru": 3}  # gate blocks in each cell's equations: i, f, o, g / r, z, n


def tiny(cell: str = "gru", **changes) -> ModelConfig:
    """A checked model config (as loading a file does) of a tiny encoder-forecaster."""
    base = dict(cell=cell, stem_channels=4, hidden_channels=[8, 8], strides=[1, 2], kernel_size=3, norm_groups=4)
    return config_from_dict({"model": {"encoder_forecaster": {**base, **changes}}}).model


def frames(batch=2, t=3, height=32, width=48, seed=0) -> torch.Tensor:
    return torch.rand(batch, t, 3, height, width, generator=torch.Generator().manual_seed(seed))  # (B, T, C, H, W)


def cells_of(model):
    return list(model.encoder_cells) + list(model.forecaster_cells)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize(
    "hidden, strides, patch",
    [([8], [1], 1), ([8, 8], [1, 2], 1), ([8, 12, 8], [1, 2, 2], 1), ([8, 8], [2, 2], 2), ([8], [1], 4)],
)
def test_output_shape_for_depths_and_patch_sizes(cell, hidden, strides, patch):
    model = build_model(tiny(cell, hidden_channels=hidden, strides=strides, patch_size=patch), t_in=3, t_out=2)
    out = model(frames(t=3))
    assert out.shape == (2, 2, 3, 32, 48)
    assert torch.isfinite(out).all()


def test_reference_sizes_are_accepted():
    """The default model takes the reference 160x240 frames and 64x64 Moving MNIST (meta: no compute)."""
    with torch.device("meta"):
        model = build_model(ModelConfig(), t_in=2, t_out=2)
        for height, width in ((160, 240), (64, 64)):
            assert model(torch.empty(1, 2, 3, height, width)).shape == (1, 2, 3, height, width)


def test_frame_size_not_divisible_by_stride_names_sizes():
    cfg = tiny(strides=[1, 2], patch_size=2)
    assert total_stride(cfg.encoder_forecaster) == 4
    model = build_model(cfg, t_in=3, t_out=3)
    with pytest.raises(FramecastError, match=r"34x48.*total stride 4"):
        model(frames(height=34, width=48))


def test_wrong_frame_count_or_channels_is_a_user_error():
    model = build_model(tiny(), t_in=3, t_out=3)
    with pytest.raises(FramecastError, match="t_in=3"):
        model(frames(t=4))
    with pytest.raises(FramecastError, match="in_channels"):
        model(frames()[:, :, :1])


def test_norm_groups_must_divide_gate_channels():
    with pytest.raises(FramecastError, match=r"model\.encoder_forecaster\.norm_groups=16"):
        build_model(tiny("gru", norm_groups=16), 3, 3)  # candidate gate has 8 channels
    build_model(tiny("lstm", norm_groups=16), 3, 3)  # 4 x 8 = 32 gate channels: fine


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_model_uses_the_configured_cell(cell):
    """Earlier public code trained a ConvGRU when asked for a ConvLSTM: check type, gates and state."""
    model = build_model(tiny(cell), 3, 3)
    for module in cells_of(model):
        assert type(module) is CELL_TYPES[cell]
        assert module.hidden_conv.out_channels == GATES[cell] * module.hidden_channels
    first = model.encoder_cells[0]
    _, state = first(torch.rand(2, 3, first.in_channels, 8, 8))
    # The LSTM carries a cell memory c next to h; the GRU's state is h alone.
    assert len(state) == (2 if cell == "lstm" else 1)


@pytest.mark.parametrize("norm_groups", [4, 0])
def test_parameter_counts_follow_the_gate_equations(norm_groups):
    """Every cell holds GATES blocks of (W_x, W_h, bias[, GN scale]); LSTM has 4 blocks, GRU 3."""
    k = 3
    per_block = {}
    for cell in ("lstm", "gru"):
        model = build_model(tiny(cell, norm_groups=norm_groups), 3, 3)
        for module in cells_of(model):
            cin, ch = module.in_channels, module.hidden_channels
            block = ch * ((cin + ch) * k * k + (2 if norm_groups else 1))
            assert count_parameters(module) == GATES[cell] * block
        per_block[cell] = sum(count_parameters(m) // GATES[cell] for m in cells_of(model))
        non_cell = count_parameters(model) - sum(count_parameters(m) for m in cells_of(model))
        per_block[cell + "_rest"] = non_cell
    assert per_block["lstm"] == per_block["gru"]
    assert per_block["lstm_rest"] == per_block["gru_rest"]
    lstm = count_parameters(build_model(tiny("lstm", norm_groups=norm_groups), 3, 3))
    gru = count_parameters(build_model(tiny("gru", norm_groups=norm_groups), 3, 3))
    assert lstm - gru == per_block["lstm"]  # exactly one more gate block per cell


def naive_sequence(cell, x):
    """The gate equations written out per step from the cell's own weights (no batching, no fusion)."""
    ch = cell.hidden_channels
    pad = cell.hidden_conv.padding
    wx = cell.input_conv.weight.split(ch)  # per-gate input weights
    bx = cell.input_conv.bias.split(ch) if cell.input_conv.bias is not None else [None] * cell.GATES
    wh = cell.hidden_conv.weight.split(ch)
    batch, steps, _, height, width = x.shape
    h = torch.zeros(batch, ch, height, width)
    c = torch.zeros_like(h)

    def norm(index, value, gates):
        if cell.norms is None:
            return value
        gn = cell.norms[index]
        return F.group_norm(value, gn.num_groups, gn.weight, gn.bias, gn.eps).split(ch, dim=1)[:gates]

    outputs = []
    for t in range(steps):
        xt = x[:, t]
        xg = [F.conv2d(xt, wx[j], bx[j], padding=pad) for j in range(cell.GATES)]
        hg = [F.conv2d(h, wh[j], padding=pad) for j in range(cell.GATES)]
        if isinstance(cell, ConvLSTMCell):
            pre = [xg[j] + hg[j] for j in range(4)]
            if cell.norms is not None:
                pre = norm(0, torch.cat(pre, 1), 4)
            i, f, o, g = torch.sigmoid(pre[0]), torch.sigmoid(pre[1]), torch.sigmoid(pre[2]), torch.tanh(pre[3])
            c = f * c + i * g
            h = o * torch.tanh(c)
        else:
            rz = [xg[0] + hg[0], xg[1] + hg[1]]
            if cell.norms is not None:
                rz = norm(0, torch.cat(rz, 1), 2)
            r, z = torch.sigmoid(rz[0]), torch.sigmoid(rz[1])
            n_pre = xg[2] + r * hg[2]
            if cell.norms is not None:
                n_pre = norm(1, n_pre, 1)[0]
            n = torch.tanh(n_pre)
            h = (1 - z) * n + z * h
        outputs.append(h)
    return torch.stack(outputs, 1), h, c


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("norm_groups", [4, 0])
def test_batched_input_conv_equals_naive_per_step(cell, norm_groups):
    torch.manual_seed(0)
    module = CELL_TYPES[cell](in_channels=5, hidden_channels=8, kernel_size=3, norm_groups=norm_groups)
    if module.norms is not None:  # non-trivial affine so a mix-up of gate blocks would show
        for gn in module.norms:
            torch.nn.init.normal_(gn.weight, 1.0, 0.3)
            torch.nn.init.normal_(gn.bias, 0.0, 0.3)
    x = torch.randn(2, 4, 5, 12, 16)  # (B, T, C, H, W)
    with torch.no_grad():
        outputs, state = module(x)
        expected, h, c = naive_sequence(module, x)
    torch.testing.assert_close(outputs, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(state[0], h, atol=1e-5, rtol=1e-4)
    if cell == "lstm":
        torch.testing.assert_close(state[1], c, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gradients_reach_every_parameter(cell):
    model = build_model(tiny(cell, hidden_channels=[8, 8, 8], strides=[1, 2, 2]), 3, 3)
    F.mse_loss(model(frames()), frames(seed=1)).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_few_steps_lower_the_loss(cell):
    torch.manual_seed(0)
    model = build_model(tiny(cell), 3, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    video = frames(batch=2, t=6)  # one fixed batch: 3 frames in, 3 to predict
    losses = []
    for _ in range(12):
        optimizer.zero_grad()
        loss = F.mse_loss(model(video[:, :3]), video[:, 3:])
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_channels_last_gives_the_same_output():
    """The loader can hand (B, T, H, W, C)-laid-out frames to a channels_last model: same numbers."""
    torch.manual_seed(0)
    model = build_model(tiny("lstm"), 3, 3).eval()
    x = frames()
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        got = model(x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_traces_as_one_graph_under_torch_compile():
    """No data-dependent Python control flow or host syncs: dynamo traces forward without a break."""
    torch._dynamo.reset()
    model = build_model(tiny("gru"), 3, 3)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    x = frames()
    torch.testing.assert_close(compiled(x), model(x))


def saved_activation_bytes(model, x, target) -> tuple[int, torch.Tensor, list[torch.Tensor]]:
    """Bytes autograd keeps for the backward pass, the loss, and the gradients."""
    saved = 0

    def keep(tensor):
        nonlocal saved
        saved += tensor.numel() * tensor.element_size()
        return tensor

    model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        loss = F.mse_loss(model(x), target)
    loss.backward()
    return saved, loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_activation_checkpointing_trades_memory_for_recomputation_not_results(cell):
    """train.activation_checkpointing: the same loss and gradients from far fewer stored activations."""
    torch.manual_seed(0)
    model = build_model(tiny(cell), 4, 4)
    x, target = frames(t=4), frames(t=4, seed=1)
    plain_bytes, plain_loss, plain_grads = saved_activation_bytes(model, x, target)
    model.set_activation_checkpointing(True)
    recomputed_bytes, loss, grads = saved_activation_bytes(model, x, target)
    torch.testing.assert_close(loss, plain_loss)
    for got, expected in zip(grads, plain_grads):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert recomputed_bytes < 0.6 * plain_bytes, (recomputed_bytes, plain_bytes)


def test_runs_under_bfloat16_autocast():
    model = build_model(tiny("lstm"), 3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(frames())
    out.float().mean().backward()
    assert out.shape == (2, 3, 3, 32, 48) and torch.isfinite(out.float()).all()


def test_build_model_takes_any_config_copy():
    """Rebuilding from a plain dict (as load_model does from a checkpoint) gives the same architecture."""
    cfg = tiny("lstm")
    again = config_from_dict({"model": dataclasses.asdict(cfg)}).model
    a, b = build_model(cfg, 3, 3), build_model(again, 3, 3)
    b.load_state_dict(a.state_dict(), strict=True)
    assert count_parameters(a) == count_parameters(b)
