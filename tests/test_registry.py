import sys
import textwrap

import pytest

import robustad as ra
from robustad.cli import main
from robustad.errors import UnknownNameError, UserError
from robustad.registry import Registry


def test_register_list_and_create():
    reg = Registry("widget", "robustad.test_widgets")

    @reg.register("resnet_small", paper="x", year=2020)
    class A:
        def __init__(self, width: int = 4):
            self.width = width

    @reg.register("resnet_big")
    def make_big(width: int = 64):
        return A(width)

    @reg.register("vit")
    class V:
        pass

    assert reg.list() == ["resnet_big", "resnet_small", "vit"]
    assert reg.list("*resnet*") == ["resnet_big", "resnet_small"]
    assert reg.list(["vit", "*big"]) == ["resnet_big", "vit"]
    assert reg.create("resnet_small", width=8).width == 8
    assert reg.create("RESNET_BIG").width == 64
    assert reg.get("resnet_small").metadata == {"paper": "x", "year": 2020}
    with pytest.raises(UserError, match="no parameter"):
        reg.create("resnet_small", depth=3)


def test_unknown_name_suggests_close_matches():
    with pytest.raises(UnknownNameError) as err:
        ra.create_method("deepsvd")
    msg = str(err.value)
    assert "Did you mean 'deepsvdd'" in msg and "Valid methods:" in msg
    with pytest.raises(UnknownNameError, match="Did you mean 'pgd'"):
        ra.create_attack("pdg")


def test_builtin_registries():
    assert "deepsvdd" in ra.list_methods()
    assert {"none", "noise", "fgsm", "pgd"} <= set(ra.list_attacks())
    assert {"digits", "fmnist"} <= set(ra.list_datasets())
    assert ra.list_methods("*svdd*") == ["deepsvdd"]


PLUGIN = """
import torch
import robustad as ra

@ra.register_method("plugmean", paper="test plugin")
class PlugMean(ra.Detector):
    def __init__(self, sign: float = 1.0):
        super().__init__()
        self.sign = sign
        self.w = torch.nn.Parameter(torch.ones(()), requires_grad=False)

    def fit(self, data, ctx=None):
        self.build(tuple(data.train_x.shape[1:]))
        return self

    def score(self, x):
        return self.sign * self.w * x.flatten(1).mean(1)
"""


def test_plugin_module_via_cli(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_ad_plugin.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "res"
    code = main(["run", "--plugin", "my_ad_plugin", "--methods", "plugmean", "--classes", "0",
                 "--attacks", "pgd", "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 0
    assert "plugmean" in (out / "leaderboard.md").read_text()
    assert main(["list", "methods", "--plugin", "my_ad_plugin"]) == 0
    assert "plugmean" in capsys.readouterr().out


def test_entry_point_registration(tmp_path, monkeypatch):
    # A real installed distribution, as pip would lay it out: dist-info with entry points.
    (tmp_path / "ep_plugin.py").write_text(textwrap.dedent(PLUGIN).replace("plugmean", "epmean"))
    dist = tmp_path / "ep_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[robustad.methods]\nepmean = ep_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(ra.METHODS, "_entry_points_loaded", False)
    try:
        assert "epmean" in ra.list_methods()
        assert ra.create_method("epmean").sign == 1.0
    finally:
        ra.METHODS._entries.pop("epmean", None)
        sys.modules.pop("ep_plugin", None)


def test_plugin_missing_module_is_a_user_error(capsys):
    assert main(["list", "methods", "--plugin", "no_such_module_xyz"]) == 2
    assert "could not be imported" in capsys.readouterr().err


def test_class_facts_are_read_from_the_class_and_a_contradiction_is_refused():
    from robustad.attacks.base import Attack
    from robustad.registry import Registry

    reg = Registry("attack", "robustad.test_only")

    @reg.register("blind")
    class Blind(Attack):
        white_box = False

    assert reg.get("blind").metadata["white_box"] is False  # from the class, stated once
    with pytest.raises(ValueError, match="white_box"):

        @reg.register("liar", white_box=True)
        class Liar(Attack):
            white_box = False
