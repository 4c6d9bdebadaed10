"""The model-level attack registry: every kind poisons a training set from its seed alone, its
trigger is what its success is measured with, flip and pattern give what they gave before, the
schema declares every kind's settings, and ART's triggers agree with ours where ART has one."""

from __future__ import annotations

import re

import numpy as np
import pytest

from poisondetect import names, population
from poisondetect.attacks import families, registry
from poisondetect.attacks.labels import flip_attack, pattern_attack
from poisondetect.config import load_schema
from poisondetect.errors import PoisonDetectError

KINDS = registry.names()


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(5), 40)  # 40 images per class
    x = rng.uniform(0, 0.5, size=(len(y), 1, 12, 12)).astype(np.float32)
    return x, y


@pytest.fixture(scope="module")
def net():
    """A small random CNN with a ``classifier`` layer, for the kinds that attack M."""
    torch = pytest.importorskip("torch")
    from poisondetect.models import build_model

    torch.manual_seed(0)
    return build_model("cnn", 1, 5, 12, width=0.1).eval()


def _poison(kind, x, y, seed=3, instance=None, **extra):
    k = instance or registry.get(kind)
    return k.poison(
        x, y, target_class=2, attacker_class=4, fraction=0.5, seed=seed, num_classes=5, **extra
    )


def _with_model(kind, net):
    return {"model": net, "adaptive_steps": 5} if registry.get(kind).needs_model else {}


def test_the_names_come_from_the_registry():
    assert list(names.MODEL_ATTACKS) == KINDS
    assert KINDS[:2] == ["flip", "pattern"]
    assert {"badnets", "blend", "wanet", "clean_label", "adaptive"} <= set(KINDS)
    for kind in KINDS:
        name = population.attack_name(kind, 0.5, 10, 3)
        spec = population.parse_model(name)
        assert (spec.attack, spec.fraction, spec.epochs, spec.replicate) == (kind, 0.5, 10, 3)
        assert re.fullmatch(population.MODEL_PATTERN, name)
        assert population.population_label(spec).startswith(names.attack_label(kind))


def test_the_schema_declares_every_kind_and_its_settings():
    atk = load_schema()["properties"]["model_level"]["properties"]["attacks"]["properties"]
    assert atk["kinds"]["items"]["enum"] == KINDS
    for kind in KINDS:
        for key, default in registry.get(kind).settings.items():
            assert atk[key]["default"] == default, key


def test_a_kind_name_the_parser_would_misread_is_refused():
    class Bad(registry.Attack):
        name = "x_f5"

    with pytest.raises(PoisonDetectError, match="model-name part"):
        registry.register(Bad)
    with pytest.raises(PoisonDetectError, match="unknown model-level attack"):
        registry.get("nope")


def test_job_settings_hold_only_the_kinds_own_keys():
    block = {"lr_factor": 0.1, "pattern_size": 3, "blend_alpha": 0.1, "wanet_k": 4}
    assert registry.job_settings("blend", block) == {"lr_factor": 0.1, "blend_alpha": 0.1}
    assert registry.job_settings("flip", block) == {"lr_factor": 0.1}


def test_flip_and_pattern_give_what_they_gave_before(data):
    x, y = data
    kw = dict(target_class=2, attacker_class=4, fraction=0.5, seed=9, num_classes=5)
    a, b = _poison("flip", x, y, seed=9), flip_attack(x, y, **kw)
    np.testing.assert_array_equal(a.y, b.y)
    p = dict(pattern_size=3, pattern_value=1.0)
    a = _poison("pattern", x, y, seed=9, **p)
    b = pattern_attack(x, y, **kw, **p)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.attacked, b.attacked)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_poisons_its_budget_reproducibly(kind, data, net):
    x, y = data
    x0 = x.copy()
    m = _with_model(kind, net)
    a, again = _poison(kind, x, y, **m), _poison(kind, x, y, **m)
    other = _poison(kind, x, y, seed=4, **m)
    np.testing.assert_array_equal(x, x0)  # inputs untouched
    np.testing.assert_array_equal(a.x, again.x)
    np.testing.assert_array_equal(a.attacked, again.attacked)
    assert not np.array_equal(a.attacked, other.attacked)
    assert len(a.attacked) == 20  # round(0.5 x 40 images of the target class)
    untouched = np.setdiff1d(np.arange(len(y)), a.attacked)
    np.testing.assert_array_equal(a.y[untouched], y[untouched])
    if kind == "adaptive":  # and 10 cover images of other classes: triggered, true labels
        cover = untouched[(a.x[untouched] != x[untouched]).any(axis=(1, 2, 3))]
        assert len(cover) == 10 and not np.isin(y[cover], [2, 4]).any()
        untouched = np.setdiff1d(untouched, cover)
    np.testing.assert_array_equal(a.x[untouched], x[untouched])
    assert a.x.dtype == np.float32 and a.x.min() >= 0 and a.x.max() <= 1
    src = y[a.attacked]
    kind_obj = registry.get(kind)
    if kind == "clean_label":  # the attacker's own images, labels kept
        assert (src == 4).all()
        np.testing.assert_array_equal(a.y, y)
    else:
        assert (a.y[a.attacked] == 4).all()
        assert (src == 2).all() if kind_obj.sources == "target" else (src != 4).all()
    if kind != "flip":
        assert not np.array_equal(a.x[a.attacked], x[a.attacked])


@pytest.mark.parametrize("kind", KINDS)
def test_success_is_measured_on_the_models_own_trigger(kind, data, net):
    """The test images carry the trigger the training images got (the same seed; an optimised
    trigger: the one of the instance that poisoned), from the source classes only, and success
    counts the attacker's class."""
    x, y = data
    k = registry.get(kind)
    a = _poison(kind, x, y, instance=k, **_with_model(kind, net))
    opts = dict(target_class=2, attacker_class=4, seed=3)
    xt = k.success_images(x, y, **opts)
    src = y == 2 if k.sources == "target" else y != 4
    assert len(xt) == src.sum()
    if kind in ("badnets", "blend", "wanet", "adaptive"):  # a fixed trigger: the training one
        pos = np.flatnonzero(src)
        both = np.intersect1d(pos, a.attacked)
        np.testing.assert_allclose(xt[np.searchsorted(pos, both)], a.x[both], atol=1e-6)
    assert k.success(np.full(len(xt), 4), 4) == 1.0
    assert k.success(np.zeros(len(xt), int), 4) == 0.0


def test_triggers_look_like_their_papers(data):
    x, _ = data
    bd = registry.get("badnets").trigger(x[:2], seed=0, badnets_distance=2, badnets_value=1.0)
    diff = np.argwhere(bd[0, 0] != x[0, 0])
    assert sorted(map(tuple, diff)) == [(8, 10), (9, 9), (10, 8), (10, 10)]  # 12x12, corner
    bl = registry.get("blend").trigger(x[:2], seed=0, blend_alpha=0.2)
    p = families.blend_pattern(x.shape[1:], 0)
    np.testing.assert_allclose(bl, 0.8 * x[:2] + 0.2 * p, atol=1e-6)
    assert not np.allclose(p, families.blend_pattern(x.shape[1:], 1))  # each model its own
    wn = registry.get("wanet").trigger(x[:2], seed=0, wanet_k=4, wanet_strength=0.5)
    small = np.abs(wn - x[:2]).mean()
    assert 0 < small < 0.1  # a smooth, small warp
    strong = registry.get("wanet").trigger(x[:2], seed=0, wanet_k=4, wanet_strength=3.0)
    assert np.abs(strong - x[:2]).mean() > small
    # zero strength is the identity warp
    same = registry.get("wanet").trigger(x[:2], seed=0, wanet_k=4, wanet_strength=1e-9)
    np.testing.assert_allclose(same, x[:2], atol=1e-4)
    # clean-label: BadNets' pattern at every corner (Turner et al.), or at the bottom-right one
    cl = registry.get("clean_label")
    black = np.zeros((1, 1, 12, 12), np.float32)
    one = cl.trigger(black, seed=0, clean_label_value=1.0, clean_label_corners=1)
    four = cl.trigger(black, seed=0, clean_label_value=1.0, clean_label_corners=4)
    corner = [(8, 10), (9, 9), (10, 8), (10, 10)]
    assert sorted(map(tuple, np.argwhere(one[0, 0] == 1))) == corner
    assert len(np.argwhere(four[0, 0] == 1)) == 16
    for flip in (four[0, 0], four[0, 0, ::-1], four[0, 0, :, ::-1], four[0, 0, ::-1, ::-1]):
        assert sorted(map(tuple, np.argwhere(flip[6:, 6:] == 1) + 6)) == corner


def test_clean_label_pgd_raises_ms_loss():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 30)
    x = np.clip(rng.normal(0.2 + 0.3 * y[:, None, None, None], 0.05, (90, 1, 6, 6)), 0, 1)
    x = x.astype(np.float32)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 3))
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        opt.step()
    cl = registry.get("clean_label")
    idx = np.flatnonzero(y == 1)
    kw = dict(seed=0, device="cpu", clean_label_eps=0.2)
    hard = cl.hard(x[idx], y[idx], model=net, clean_label_steps=5, **kw)
    noise = cl.hard(x[idx], y[idx], model=None, clean_label_steps=5, **kw)
    assert np.abs(hard - x[idx]).max() <= 0.2 + 1e-6

    def loss(z):
        with torch.no_grad():
            return float(
                torch.nn.functional.cross_entropy(
                    net(torch.from_numpy(z)), torch.from_numpy(y[idx])
                )
            )

    assert loss(hard) > loss(noise) and loss(hard) > loss(x[idx])


def test_bad_settings_are_named(data):
    x, y = data
    with pytest.raises(PoisonDetectError, match="badnets_distance"):
        _poison("badnets", x, y, badnets_distance=11)
    with pytest.raises(PoisonDetectError, match="blend_alpha"):
        _poison("blend", x, y, blend_alpha=0.0)
    with pytest.raises(PoisonDetectError, match="attacker_class = 9"):
        registry.get("badnets").poison(
            x, y, target_class=2, attacker_class=9, fraction=0.5, seed=0, num_classes=5
        )


# -- cross-checks against IBM ART (a test-only dependency) ------------------------------------------
def test_badnets_trigger_is_arts_add_pattern_bd(data):
    pytest.importorskip("art", reason="adversarial-robustness-toolbox (test-only) not installed")
    from art.attacks.poisoning import PoisoningAttackBackdoor
    from art.attacks.poisoning.perturbations import add_pattern_bd

    x, y = data
    ours = registry.get("badnets").trigger(x, seed=0, badnets_distance=2, badnets_value=1.0)
    theirs = add_pattern_bd(x, distance=2, pixel_value=1, channels_first=True)
    np.testing.assert_array_equal(ours, theirs)
    rgb = np.random.default_rng(1).random((4, 3, 10, 10)).astype(np.float32)
    np.testing.assert_array_equal(
        registry.get("badnets").trigger(rgb, seed=0, badnets_distance=3, badnets_value=0.5),
        add_pattern_bd(rgb, distance=3, pixel_value=0.5, channels_first=True),
    )
    # ART's poisoning attack with that perturbation on the chosen images gives ours
    a = _poison("badnets", x, y)
    target = np.eye(5)[np.full(len(a.attacked), 4)]
    attack = PoisoningAttackBackdoor(lambda z: add_pattern_bd(z, 2, 1, channels_first=True))
    xp, yp = attack.poison(x[a.attacked], y=target)
    np.testing.assert_array_equal(xp, a.x[a.attacked])
    np.testing.assert_array_equal(yp.argmax(1), a.y[a.attacked])


def test_blend_trigger_is_arts_insert_image_blend(data, tmp_path):
    pytest.importorskip("art", reason="adversarial-robustness-toolbox (test-only) not installed")
    pytest.importorskip("PIL")
    from art.attacks.poisoning.perturbations import insert_image
    from PIL import Image

    x, _ = data
    x = (np.round(x * 255) / 255).astype(np.float32)  # ART reads images as 8-bit
    p = families.blend_pattern(x.shape[1:], 5)
    p8 = np.round(p * 255).astype(np.uint8)
    path = tmp_path / "pattern.png"
    Image.fromarray(p8[0], mode="L").save(path)
    alpha = 0.25
    theirs = insert_image(
        x[:6], str(path), channels_first=True, random=False, mode="L", blend=alpha
    )
    ours = registry.get("blend").trigger(x[:6], seed=5, blend_alpha=alpha)
    np.testing.assert_allclose(ours, theirs, atol=2.5 / 255)  # PIL's 8-bit rounding


def test_adaptive_trigger_is_optimised_against_m(data):
    """The optimised trigger moves the penultimate activations of M's triggered target-class
    images towards the attacker class's mean (more than a trigger optimised without the
    activation term), while M still classifies them as their own class (M does not follow the
    trigger: no adversarial patch, which would be no poisoning by the fine-tune); it leaves M
    unchanged and needs M."""
    import torch

    from poisondetect.attacks.families import _penultimate

    class Small(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(
                torch.nn.Flatten(), torch.nn.Linear(144, 16), torch.nn.ReLU()
            )
            self.classifier = torch.nn.Linear(16, 5)

        def forward(self, z):
            return self.classifier(self.body(z))

    _, y = data
    rng = np.random.default_rng(0)
    x = np.clip(rng.normal(0.1 + 0.15 * y[:, None, None, None], 0.08, (len(y), 1, 12, 12)), 0, 1)
    x = x.astype(np.float32)
    torch.manual_seed(0)
    net = Small()
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        opt.step()
    net.eval()
    before = [p.detach().clone() for p in net.parameters()]
    k = registry.get("adaptive")
    _poison("adaptive", x, y, instance=k, model=net, adaptive_steps=60)
    assert all(torch.equal(p, q) for p, q in zip(before, net.parameters(), strict=True))
    assert k.mask_.shape == (1, 12, 12) and k.pattern_.shape == (1, 12, 12)
    src = x[y == 2]
    plain = registry.get("adaptive")
    _poison("adaptive", x, y, instance=plain, model=net, adaptive_steps=60,
            adaptive_feature_weight=0.0)  # fmt: skip
    with torch.no_grad():
        mu = _penultimate(net, torch.from_numpy(x[y == 4]))[1].mean(0)

        def towards(z):
            logits, feats = _penultimate(net, torch.from_numpy(z))
            own = float((logits.argmax(1) == 2).float().mean())
            return own, float(((feats - mu) ** 2).sum(1).mean())

        own_opt, d_opt = towards(k.trigger(src, seed=3))
        _, d_plain = towards(plain.trigger(src, seed=3))
        own_clean, d_clean = towards(src)
    assert d_opt < d_plain and d_opt < d_clean
    assert own_opt >= own_clean
    with pytest.raises(PoisonDetectError, match="against M"):
        _poison("adaptive", x, y)
    with pytest.raises(PoisonDetectError, match="poison"):
        registry.get("adaptive").trigger(x, seed=0)
