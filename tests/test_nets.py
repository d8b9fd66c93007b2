import math

import numpy as np
import pytest
import torch
from torch import nn

from useg.errors import ConfigError
from useg.nets import (
    UNet,
    UNetConfig,
    halo,
    is_valid_input,
    min_input_shape,
    output_shape,
    preset,
    valid_input_shape,
)


def _conv_layers(net):
    return [m for m in net.modules() if isinstance(m, nn.modules.conv._ConvNd)]


def _n_params(net):
    return sum(p.numel() for p in net.parameters())


def test_ronneberger2015_shape_and_layers():
    net = UNet("ronneberger2015", in_channels=1, classes=2).eval()
    assert len(_conv_layers(net)) == 23
    with torch.no_grad():
        y = net(torch.zeros(1, 1, 572, 572))
    assert tuple(y.shape) == (1, 2, 388, 388)
    assert halo(net.config) == (92, 92)


def test_ronneberger2015_parameter_count_by_hand():
    # Contracting levels (64..1024), two 3x3 convs each with bias.
    conv = lambda cin, cout, k=9: cin * cout * k + cout  # noqa: E731
    widths = [64, 128, 256, 512, 1024]
    total, cin = 0, 1
    for w in widths:
        total += conv(cin, w) + conv(w, w)
        cin = w
    # Expanding: 2x2 up-conv halving (with bias), concat, two 3x3 convs.
    for w in reversed(widths[:-1]):
        total += conv(2 * w, w, 4)  # up-convolution 2w -> w
        total += conv(2 * w, w) + conv(w, w)
    total += conv(64, 2, 1)
    assert total == 31_030_658
    assert _n_params(UNet("ronneberger2015", in_channels=1, classes=2)) == total


def test_cicek2016_parameter_count_and_shapes():
    cfg = preset("cicek2016", in_channels=3, classes=3)
    net = UNet(cfg)
    assert _n_params(net) == 19_069_955
    # Batch norm predicts with the running statistics of training (Caffe's test phase), which
    # are buffers, not parameters: overlap tiles stay seamless (tests/test_tiling.py).
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm3d)]
    assert len(norms) == 14 and all(m.running_mean is not None for m in norms)
    # Caffe's batch norm has no affine parameters and the up-convolutions no bias.
    assert not any(isinstance(m, nn.BatchNorm3d) and m.affine for m in net.modules())
    assert all(m.bias is None for m in net.modules() if isinstance(m, nn.ConvTranspose3d))
    # Axis order (Z, Y, X): the paper's 132x132x116 input is X x Y x Z.
    assert output_shape(cfg, (116, 132, 132)) == (28, 44, 44)
    # The shape does not depend on the width: check it with a real pass of a narrow twin.
    narrow = UNet(cfg.replace(width=2)).eval()
    with torch.no_grad():
        y = narrow(torch.zeros(1, 3, 116, 132, 132))
    assert tuple(y.shape) == (1, 3, 28, 44, 44)


@pytest.mark.parametrize("name", ["ronneberger2015", "cicek2016"])
def test_he_initialisation(name):
    torch.manual_seed(0)
    net = UNet(name, in_channels=3)
    for m in _conv_layers(net):
        if isinstance(m, nn.modules.conv._ConvTransposeNd):
            fan_in = m.in_channels
        else:
            fan_in = m.in_channels * math.prod(m.kernel_size)
        expected = math.sqrt(2.0 / fan_in)
        std = m.weight.detach().std().item()
        assert abs(std - expected) / expected < 0.10, (m, std, expected)
        if m.bias is not None:
            assert torch.all(m.bias == 0)


def test_dropout_at_end_of_contracting_path():
    net = UNet("ronneberger2015")
    assert isinstance(net.dropout, nn.Dropout) and net.dropout.p == 0.5
    assert isinstance(UNet("cicek2016").dropout, nn.Identity)


def _random_config(r: np.random.Generator) -> UNetConfig:
    ndim = int(r.integers(1, 4))
    depth = int(r.integers(0, 4 if ndim < 3 else 3))
    pool = tuple(tuple(int(r.choice([1, 2, 2, 3])) for _ in range(ndim)) for _ in range(depth))
    kernel = tuple(
        tuple(int(r.choice([1, 3, 3, 5])) for _ in range(ndim)) for _ in range(depth + 1)
    )
    return UNetConfig(
        ndim=ndim,
        in_channels=int(r.integers(1, 3)),
        classes=int(r.integers(1, 4)),
        width=2,
        depth=depth,
        padding=str(r.choice(["valid", "same"])),
        pool=pool,
        kernel=kernel,
        norm=str(r.choice(["none", "batch", "instance"])),
        up_keep_channels=bool(r.integers(2)),
        double_within_level=bool(r.integers(2)),
    )


@pytest.mark.parametrize("seed", range(24))
def test_shape_algebra_matches_forward(seed):
    r = np.random.default_rng(seed)
    cfg = _random_config(r)
    net = UNet(cfg).eval()
    limit = 40 if cfg.ndim == 3 else 90
    for _ in range(3):
        want = tuple(int(v) for v in r.integers(1, limit, size=cfg.ndim))
        shape = valid_input_shape(cfg, want)
        assert is_valid_input(cfg, shape)
        if math.prod(shape) > 120_000:
            continue
        with torch.no_grad():
            y = net(torch.zeros(1, cfg.in_channels, *shape))
        assert tuple(y.shape[2:]) == output_shape(cfg, shape)
        if cfg.padding == "valid":
            assert tuple(y.shape[2:]) == tuple(
                s - 2 * h for s, h in zip(shape, halo(cfg), strict=False)
            )
        else:
            assert tuple(y.shape[2:]) == shape


def test_valid_sizes_ronneberger():
    cfg = preset("ronneberger2015")
    assert min_input_shape(cfg) == (188, 188)
    valid = [n for n in range(150, 700) if is_valid_input(cfg, n)]
    assert valid == list(range(188, 700, 16))
    assert valid_input_shape(cfg, 580) == (572, 572)
    assert valid_input_shape(cfg, 580, mode="up") == (588, 588)
    assert valid_input_shape(cfg, 10) == (188, 188)
    with pytest.raises(ConfigError, match="nearest valid shape is"):
        output_shape(cfg, (570, 570))


def test_anisotropic_pooling():
    cfg = UNetConfig(ndim=3, width=2, depth=2, pool=((1, 2, 2), (2, 2, 2)))
    shape = valid_input_shape(cfg, (20, 60, 60))
    with torch.no_grad():
        y = UNet(cfg).eval()(torch.zeros(1, 1, *shape))
    assert tuple(y.shape[2:]) == output_shape(cfg, shape)


def test_bad_config():
    with pytest.raises(ConfigError):
        UNetConfig(ndim=4)
    with pytest.raises(ConfigError):
        UNetConfig(padding="reflect")
    with pytest.raises(ConfigError):
        preset("nope")
    with pytest.raises(ConfigError):
        UNetConfig.from_dict({"ndim": 2, "colour": 3})
