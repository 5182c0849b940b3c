"""get_gate_sites: which convs are gated, against expectations written from the models'
structure (released GaterNet offsets, torchvision block attributes), and its errors."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gatekit
from gatekit import GatekitError, GateSite, get_gate_sites
from gatekit.models import resnet20, resnet56

torchvision = pytest.importorskip("torchvision")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_resnet20_matches_released_gate_indices() -> None:
    # backbone_resnet.py in the released code: gate_idx = [0, 16, 32, 48, 48+32, 48+32*2,
    # 48+32*3, 144+64, 144+64*2], 336 gates in all; gated after bn2 of each block.
    sites = get_gate_sites(resnet20())
    assert [s.offset for s in sites] == [0, 16, 32, 48, 80, 112, 144, 208, 272]
    assert [s.name for s in sites] == [
        f"stage{i}.block{j}.conv2" for i in (1, 2, 3) for j in (1, 2, 3)
    ]
    assert [s.after for s in sites] == [
        f"stage{i}.block{j}.bn2" for i in (1, 2, 3) for j in (1, 2, 3)
    ]
    assert sites[-1].stop == 336
    assert sum(s.num_gates for s in get_gate_sites(resnet56())) == 1008  # GATERNET.md


def _blocks(model: nn.Module, cls: type) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, cls)]


def test_torchvision_resnet50_policies() -> None:
    from torchvision.models.resnet import Bottleneck

    model = torchvision.models.resnet50()
    blocks = _blocks(model, Bottleneck)
    residual = get_gate_sites(model, "residual")
    assert [(s.name, s.after) for s in residual] == [(f"{n}.conv3", f"{n}.bn3") for n, _ in blocks]
    inner = get_gate_sites(model, "inner")
    assert [s.name for s in inner] == [f"{n}.{c}" for n, _ in blocks for c in ("conv1", "conv2")]
    assert all(s.activation == s.name.rsplit(".", 1)[0] + ".relu" for s in inner)
    # torchvision registers modules in the order its Bottleneck runs them (downsample last).
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert [s.name for s in get_gate_sites(model, "all")] == convs[1:]
    assert [s.offset for s in residual][:2] == [0, 256]


def test_mobilenet_v2_gates_projection_of_residual_blocks() -> None:
    from torchvision.models.mobilenetv2 import InvertedResidual

    model = torchvision.models.mobilenet_v2()
    expected = [
        (f"{n}.conv.{len(b.conv) - 2}", f"{n}.conv.{len(b.conv) - 1}")
        for n, b in _blocks(model, InvertedResidual)
        if b.use_res_connect
    ]
    assert [(s.name, s.after) for s in get_gate_sites(model, "residual")] == expected
    depthwise = get_gate_sites(model, lambda name, m: m.groups > 1)
    assert depthwise and all(
        dict(model.named_modules())[s.name].groups == s.channels for s in depthwise
    )


def test_regnet_y_leaves_squeeze_excitation_out_of_branches() -> None:
    model = torchvision.models.regnet_y_400mf()
    blocks = [n.removesuffix(".f") for n, _ in model.named_modules() if n.endswith(".f")]
    assert [s.name for s in get_gate_sites(model, "residual")] == [f"{n}.f.c.0" for n in blocks]
    assert [s.name for s in get_gate_sites(model, "inner")] == [
        f"{n}.f.{c}.0" for n in blocks for c in "ab"
    ]
    assert any(".se." in s.name for s in get_gate_sites(model, "all"))


def test_convnext_gates_after_channels_last_layernorm() -> None:
    from torchvision.models.convnext import CNBlock

    model = torchvision.models.convnext_tiny()
    sites = get_gate_sites(model, "residual")
    blocks = _blocks(model, CNBlock)
    assert [(s.name, s.after, s.channel_dim) for s in sites] == [
        (f"{n}.block.0", f"{n}.block.2", -1) for n, _ in blocks
    ]


class _Tie(nn.Module):
    """Two conv branches and no identity: both are residual branches."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        x = self.stem(x)
        return self.a(x) + self.b(x)


def test_tied_branches_are_both_gated() -> None:
    assert [s.name for s in get_gate_sites(_Tie())] == ["a", "b"]


class _Res(nn.Module):
    def __init__(self, conv: type, norm: type, c: int = 8, **norm_kw):
        super().__init__()
        self.stem = conv(2, c, 3, padding=1)
        self.conv1 = conv(c, c, 3, padding=1, groups=c)
        self.n1 = norm(c, **norm_kw)
        self.conv2 = conv(c, c, 1)
        self.n2 = norm(c, **norm_kw)

    def forward(self, x):
        x = self.stem(x)
        return x + self.n2(self.conv2(F.relu(self.n1(self.conv1(x)))))


@pytest.mark.parametrize(
    ("conv", "norm", "dims"),
    [
        (nn.Conv1d, nn.BatchNorm1d, 1),
        (nn.Conv2d, nn.InstanceNorm2d, 2),
        (nn.Conv3d, nn.BatchNorm3d, 3),
    ],
)
def test_conv1d_2d_3d(conv, norm, dims) -> None:
    sites = get_gate_sites(_Res(conv, norm), "all")
    assert [(s.name, s.after, s.spatial_dims, s.activation) for s in sites] == [
        ("conv1", "n1", dims, "relu"),
        ("conv2", "n2", dims, None),
    ]


def test_norm_kinds() -> None:
    from torchvision.ops import FrozenBatchNorm2d

    assert get_gate_sites(_Res(nn.Conv2d, FrozenBatchNorm2d))[0].after == "n2"
    group = _Res(nn.Conv2d, nn.BatchNorm2d)
    group.n2 = nn.GroupNorm(2, 8)
    assert get_gate_sites(group)[0].after == "n2"
    # A plain LayerNorm right after a conv normalises the last spatial dim, not channels:
    # the gate goes on the conv output instead.
    plain = _Res(nn.Conv2d, nn.BatchNorm2d)
    plain.n2 = nn.LayerNorm(8)
    site = get_gate_sites(plain)[0]
    assert (site.after, site.norm) == ("conv2", None)


def test_group_size() -> None:
    sites = get_gate_sites(resnet20(), group_size=4)
    assert [s.num_gates for s in sites] == [4] * 3 + [8] * 3 + [16] * 3
    assert [s.offset for s in sites][:4] == [0, 4, 8, 12]
    with pytest.raises(GatekitError, match=r"group_size=3 must divide.*stage1.block1.conv2: 16"):
        get_gate_sites(resnet20(), group_size=3)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(GatekitError, match="group_size must be an int >= 1"):
            get_gate_sites(resnet20(), group_size=bad)


def test_name_list_runs_in_execution_order() -> None:
    names = ["stage2.block1.conv1", "stage1.block1.conv2", "stage2.block1.shortcut.conv"]
    sites = get_gate_sites(resnet20(), names)
    assert [s.name for s in sites] == [
        "stage1.block1.conv2",
        "stage2.block1.conv1",
        "stage2.block1.shortcut.conv",
    ]
    assert [s.after for s in sites] == [
        "stage1.block1.bn2",
        "stage2.block1.bn1",
        "stage2.block1.shortcut.bn",
    ]


@pytest.mark.parametrize(
    ("sites", "match"),
    [
        (["stage1.block1.conv3"], r"not a module of the backbone.*close: \['stage1.block1.conv2'"),
        (["stage1.block1.bn1"], "is a BatchNorm2d, not a Conv1d/2d/3d"),
        (["stage1.block1.conv1", "stage1.block1.conv1"], "duplicates"),
        ("everything", "unknown gate-site policy 'everything'"),
        (3, "unknown gate-site policy 3"),
        (lambda name, m: False, "selects no gate sites"),
    ],
)
def test_bad_policies(sites, match) -> None:
    with pytest.raises(GatekitError, match=match):
        get_gate_sites(resnet20(), sites)


def test_no_residual_and_no_convs() -> None:
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
    with pytest.raises(GatekitError, match=r"no residual additions.*sites='all'"):
        get_gate_sites(plain)
    assert [s.name for s in get_gate_sites(plain, "all")] == ["2"]
    with pytest.raises(GatekitError, match="no Conv1d/Conv2d/Conv3d"):
        get_gate_sites(nn.Sequential(nn.Linear(3, 3)), "all")
    with pytest.raises(GatekitError, match="expected an nn\\.Module"):
        get_gate_sites(lambda x: x)


class _Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.shared = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return self.shared(self.shared(self.stem(x)))


def test_conv_called_twice() -> None:
    with pytest.raises(GatekitError, match="'shared' runs 2 times"):
        get_gate_sites(_Twice(), "all")
    assert [s.name for s in get_gate_sites(_Twice(), ["stem"])] == ["stem"]


def test_backbone_is_not_modified() -> None:
    model = torchvision.models.efficientnet_b0()
    model.features[1].train(False)  # mixed flags must survive the two tracing passes
    flags = [m.training for m in model.modules()]
    state = copy.deepcopy(model.state_dict())
    get_gate_sites(model, "all")
    assert [m.training for m in model.modules()] == flags
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


class _DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        if x.sum() > 0:  # fx cannot trace control flow on tensor values
            return self.conv(x)
        return x


def needs_wrapping(x):  # public name: fx autowraps no names starting with "_"
    return x if x.mean() > 0 else -x


class _Net(nn.Module):
    def __init__(self, use_function: bool = False):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.conv = nn.Conv2d(4, 4, 1)
        self.odd = _DataDependent()
        self.use_function = use_function

    def forward(self, x):
        y = self.stem(x)
        y = needs_wrapping(y) if self.use_function else self.odd(y)
        return self.conv(y)


def test_untraceable_module_error_and_remedy() -> None:
    with pytest.raises(GatekitError) as info:
        get_gate_sites(_Net(), "all")
    msg = str(info.value)
    assert "module 'odd' (_DataDependent)" in msg and "leaf_modules=[_DataDependent]" in msg
    assert "'forward'" in msg and "test_sites.py" in msg  # the failing function and file
    assert "TraceError" in msg or "control flow" in msg  # the original message, briefly
    assert info.value.__cause__ is None and info.value.__suppress_context__
    for leaf in ([_DataDependent], ["odd"]):
        assert [s.name for s in get_gate_sites(_Net(), "all", leaf_modules=leaf)] == ["conv"]


def test_untraceable_function_error_and_remedy() -> None:
    with pytest.raises(
        GatekitError,
        match=r"(?s)in function 'needs_wrapping'.*autowrap_functions=\[needs_wrapping\]",
    ):
        get_gate_sites(_Net(use_function=True), "all")
    sites = get_gate_sites(_Net(use_function=True), "all", autowrap_functions=[needs_wrapping])
    assert [s.name for s in sites] == ["conv"]
    with pytest.raises(GatekitError, match="leaf_modules takes"):
        get_gate_sites(_Net(), "all", leaf_modules=[3])


class _ModeBranch(nn.Module):
    """Runs different operations in train and eval mode (and holds a conv when asked)."""

    def __init__(self, with_conv: bool):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1) if with_conv else None

    def forward(self, x):
        if self.training:
            x = x * 2
        return x if self.conv is None else self.conv(x)


class _ModeNet(nn.Module):
    def __init__(self, with_conv: bool):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.branch = _ModeBranch(with_conv)
        self.conv = nn.Conv2d(4, 4, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.stem(x)
        y = y + self.bn(self.conv(self.branch(y)))
        return F.dropout(y, 0.5, training=self.training)


def test_mode_dependent_code_follows_the_gated_models_mode() -> None:
    model = _ModeNet(with_conv=False)
    net = gatekit.gate_model(model, nn.Flatten(), sites="residual", gater_features=3 * 4 * 4)
    x = torch.randn(2, 3, 4, 4)
    ones = torch.ones(2, net.num_gates)
    # Unpickling re-traces the generated code: the mode must still be read at run time.
    for gated in (net, pickle.loads(pickle.dumps(net))):
        reference = copy.deepcopy(model)  # same weights and statistics as gated at the start
        for train in (True, False, True):
            reference.train(train)
            gated.train(train)
            torch.manual_seed(0)
            expected = reference(x)
            torch.manual_seed(0)
            assert torch.equal(gated(x, gates=ones), expected)
    with pytest.raises(GatekitError, match=r"module 'branch' \(_ModeBranch\).*holds convs"):
        get_gate_sites(_ModeNet(with_conv=True), "all")
    assert [
        s.name for s in get_gate_sites(_ModeNet(with_conv=True), ["conv"], leaf_modules=["branch"])
    ] == ["conv"]


def test_gate_site_is_frozen() -> None:
    site = GateSite("c", "bn", channels=8, offset=4, group_size=2)
    assert (site.num_gates, site.stop) == (4, 8)
    with pytest.raises(AttributeError):
        site.offset = 0


_USER_CODE = '''
import torch
from torch import nn


def user_branch(x):
    return x if x.mean() > 0 else -x  # line 7: data-dependent control flow


class UserNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return self.conv(user_branch(self.stem(x)))
'''


@pytest.mark.parametrize("folder", ["gatekit", "torch", "src/torch/gatekit"])
def test_untraceable_user_code_found_whatever_its_folder_is_called(tmp_path, folder) -> None:
    # User code in a folder named like a library (a clone of this repository is the most
    # natural case) is still the user's: the message names its function, file and line.
    import importlib.util

    where = tmp_path / folder
    where.mkdir(parents=True)
    path = where / "user_model.py"
    path.write_text(_USER_CODE)
    spec = importlib.util.spec_from_file_location(f"user_model_{folder.replace('/', '_')}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(GatekitError) as info:
        get_gate_sites(module.UserNet(), "all")
    msg = str(info.value)
    assert "in function 'user_branch' (user_model.py:7)" in msg, msg
    assert "autowrap_functions=[user_branch]" in msg, msg
    sites = get_gate_sites(module.UserNet(), "all", autowrap_functions=[module.user_branch])
    assert [s.name for s in sites] == ["conv"]
