"""The 3D UNet: attention equals the explicit formula, checkpointing is real, bad shapes are named."""
import pytest
import torch

from ramvid import create_model, create_model_and_diffusion, model_and_diffusion_defaults
from ramvid.runtime import compile_model, configure_tf32
from ramvid.unet import AttentionBlock, ResBlock

TINY = dict(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2",
            attention_resolutions="8", num_heads=2, seq_len=4, scale_time_dim=0)


def explicit_attention(block, x):
    """Per-head softmax(q k^T / sqrt(d)) v written out with einsum, L x L matrix and all."""
    n, c, *spatial = x.shape
    x = x.reshape(n, c, -1)
    qkv = block.qkv(block.norm(x)).reshape(n * block.num_heads, 3 * c // block.num_heads, -1)
    q, k, v = qkv.chunk(3, dim=1)  # (N*h, d, L)
    scale = (c // block.num_heads) ** -0.25
    weights = torch.einsum("bcl,bcm->blm", q * scale, k * scale).softmax(dim=-1)
    h = torch.einsum("blm,bcm->bcl", weights, v).reshape(n, c, -1)
    return (x + block.proj_out(h)).reshape(n, c, *spatial)


@pytest.mark.parametrize("heads", [1, 4])
def test_sdpa_attention_equals_explicit_formula(heads):
    torch.manual_seed(0)
    block = AttentionBlock(64, heads, use_checkpoint=False)
    torch.nn.init.normal_(block.proj_out.weight)  # zero-initialised otherwise
    x = torch.randn(2, 64, 3, 4, 4)
    torch.testing.assert_close(block(x), explicit_attention(block, x), atol=1e-5, rtol=1e-5)


def test_activation_checkpointing_recomputes_and_keeps_gradients():
    torch.manual_seed(0)
    plain = create_model(**TINY, use_checkpoint=False)
    ckpt = create_model(**TINY, use_checkpoint=True)
    for p in plain.parameters():
        if p.dim() > 1:  # undo the zero-initialisation so every gradient is non-trivial
            torch.nn.init.normal_(p, std=0.05)
    ckpt.load_state_dict(plain.state_dict())

    calls = {"n": 0}

    def count(module, args, out):
        calls["n"] += 1

    block = next(m for m in ckpt.modules() if isinstance(m, ResBlock))
    block.in_layers[2].register_forward_hook(count)  # the first conv

    x, t = torch.randn(2, 3, 4, 16, 16), torch.tensor([10.0, 500.0])
    grads = []
    for model in (plain, ckpt):
        model.train()
        model.zero_grad()
        model(x, t).pow(2).mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert calls["n"] == 2  # forward, then recomputed during backward
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("seq_len,scale_time_dim", [(6, 6), (7, 8), (5, 4), (8, 8)])
def test_temporal_downsampling_restores_odd_lengths(seq_len, scale_time_dim):
    model = create_model(**{**TINY, "channel_mult": "1,2,2", "seq_len": seq_len,
                            "scale_time_dim": scale_time_dim})
    x = torch.randn(1, 3, seq_len, 16, 16)
    assert model(x, torch.tensor([3.0])).shape == x.shape


def test_time_strides_follow_scale_time_dim():
    model = create_model(**{**TINY, "channel_mult": "1,2,2,2", "seq_len": 8, "scale_time_dim": 4})
    assert model.config.time_strides() == [2, 2, 1]  # targets 2, 1, 0
    assert create_model(**TINY).config.time_strides() == [1]


@pytest.mark.parametrize("flags,named", [
    (dict(num_channels=48), "num_channels"),
    (dict(image_size=48, channel_mult=""), "image_size"),
    (dict(image_size=20, channel_mult="1,2,2,2"), "image_size"),
    (dict(num_heads=3), "num_heads"),
    (dict(class_cond=True), "num_classes"),
    (dict(seq_len=2, scale_time_dim=8, channel_mult="1,2,2"), "scale_time_dim"),
    (dict(attention_resolutions="a,b"), "attention_resolutions"),
    (dict(channel_mult="1,x"), "channel_mult"),
])
def test_invalid_shapes_raise_value_error_naming_the_flag(flags, named):
    with pytest.raises(ValueError, match=named):
        create_model(**{**TINY, **flags})


def test_defaults_and_factory_surface():
    defaults = model_and_diffusion_defaults()
    for name in ("image_size", "num_channels", "num_res_blocks", "num_heads", "attention_resolutions",
                 "dropout", "learn_sigma", "sigma_small", "class_cond", "diffusion_steps",
                 "noise_schedule", "timestep_respacing", "use_kl", "predict_xstart",
                 "rescale_timesteps", "rescale_learned_sigmas", "use_checkpoint",
                 "use_scale_shift_norm", "scale_time_dim", "rgb", "seq_len"):
        assert name in defaults
    model, diffusion = create_model_and_diffusion(**TINY, class_cond=True, num_classes=3,
                                                  rgb=False, learn_sigma=True)
    out = model(torch.randn(2, 1, 4, 16, 16), torch.tensor([1.0, 2.0]), y=torch.tensor([0, 2]))
    assert out.shape == (2, 2, 4, 16, 16)
    assert diffusion.num_timesteps == defaults["diffusion_steps"]
    with pytest.raises(TypeError, match="nonsense"):
        create_model_and_diffusion(nonsense=1)
    with pytest.raises(ValueError, match="class"):
        model(torch.randn(1, 1, 4, 16, 16), torch.tensor([1.0]))


@pytest.mark.parametrize("scale_shift", [True, False])
def test_resblock_recomputed_norm_activation_matches_plain_composition(scale_shift):
    """norm_silu keeps only its input for backward; values and gradients must not change."""
    torch.manual_seed(0)
    block = ResBlock(32, 64, 0.0, 64, scale_shift, use_checkpoint=False)
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(2, 32, 3, 4, 4, requires_grad=True)
    emb = torch.randn(2, 64, requires_grad=True)

    def plain(x, emb):
        h = block.in_layers(x)
        emb_out = block.emb_layers(emb)[:, :, None, None, None]
        if scale_shift:
            scale, shift = emb_out.chunk(2, dim=1)
            h = block.out_layers[1:](block.out_layers[0](h) * (1 + scale) + shift)
        else:
            h = block.out_layers(h + emb_out)
        return block.skip_connection(x) + h

    results = []
    for fn in (block, plain):
        out = fn(x, emb)
        grads = torch.autograd.grad(out.pow(2).sum(), [x, emb, *block.parameters()])
        results.append((out, grads))
    torch.testing.assert_close(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- accel
SMALLEST = dict(TINY, image_size=8, channel_mult="1")  # one level: the quickest graph to compile


def test_compiled_unet_trains_like_eager_and_saves_plain_weights(one_thread):
    """torch.compile (Inductor, C++ on CPU) of a UNet: forward and gradients equal eager up to
    float32 reordering in fused kernels (1e-5), and state_dict keys are the module's own.

    Catches compile_model returning the bare torch.compile wrapper (`_orig_mod.` prefixes)."""
    torch.manual_seed(0)
    model = create_model(**SMALLEST)
    for p in model.parameters():
        if p.dim() > 1:  # the output layer is zero-initialised: make the output depend on input
            torch.nn.init.normal_(p, std=0.05)
    net = compile_model(model, True)
    x, t = torch.randn(2, 3, 4, 8, 8), torch.tensor([10.0, 500.0])
    results = []
    for fn in (model, net):
        model.zero_grad()
        out = fn(x, t)
        out.pow(2).mean().backward()
        results.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-5, rtol=1e-5)
    for a, b in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert list(net.state_dict()) == list(model.state_dict())
    assert not any("_orig_mod" in k for k in net.state_dict())


def test_compile_failures_fall_back_to_eager_with_one_line(monkeypatch, capsys):
    """Catches a fallback that stays silent, prints a traceback, or retries compiling each call."""
    model = create_model(**SMALLEST).eval()
    x, t = torch.randn(1, 3, 4, 8, 8), torch.tensor([3.0])
    expected = model(x, t)

    def refuse(*args, **kwargs):
        raise RuntimeError("Dynamo is not supported on this Python\nsecond line")

    monkeypatch.setattr(torch, "compile", refuse)
    assert compile_model(model, True) is model
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "torch.compile failed" in err and "second line" not in err

    calls = []

    def broken_compiler(module, **kwargs):
        def run(*args, **kw):  # compilation happens on the first call
            calls.append(1)
            raise torch._dynamo.exc.TorchDynamoException("C++ compiler not found")
        return run

    monkeypatch.setattr(torch, "compile", broken_compiler)
    net = compile_model(model, True)
    torch.testing.assert_close(net(x, t), expected, atol=0, rtol=0)
    torch.testing.assert_close(net(x, t), expected, atol=0, rtol=0)
    assert len(calls) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "C++ compiler not found" in err
    assert compile_model(model, False) is model


def test_tf32_switch_sets_cuda_backends_only():
    """Both flag APIs read back what was set (torch >= 2.9 raises on reads through the legacy
    API after a set through the new one) and the CPU (oneDNN) precision is untouched.
    Catches setting the new per-backend API, or the global float32 precision (which also
    switches oneDNN matmuls to TF32)."""
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    cpu_before = (torch.backends.mkldnn.matmul.fp32_precision,
                  torch.backends.mkldnn.conv.fp32_precision)
    try:
        for enabled in (True, False):
            configure_tf32(enabled)
            assert torch.backends.cuda.matmul.allow_tf32 is enabled
            assert torch.backends.cudnn.allow_tf32 is enabled
            assert torch.get_float32_matmul_precision() == ("high" if enabled else "highest")
            assert (torch.backends.cuda.matmul.fp32_precision == "tf32") is enabled
            assert (torch.backends.mkldnn.matmul.fp32_precision,
                    torch.backends.mkldnn.conv.fp32_precision) == cpu_before
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
