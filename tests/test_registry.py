"""The registry, spec strings, plugins (file, module, entry point) and ``suite list``."""

import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import attentions
from attentions import SpecError, canonical, parse_spec
from attentions.spec import format_value
from suite.run import builtin_attentions


@pytest.mark.parametrize("spec,want", [
    ("entmax", "entmax"),
    ("entmax:alpha=1.5", "entmax"),
    ("entmax:alpha=1.50", "entmax"),
    ("entmax:alpha=1.250", "entmax:alpha=1.25"),
    (" entmax : alpha = 2.0 ", "entmax:alpha=2"),
    ("asentmax:gamma_range=1,delta=0.5", "asentmax:delta=0.5,gamma_range=1"),
    ("asentmax:delta=0.5,gamma_range=1", "asentmax:delta=0.5,gamma_range=1"),
    ("topk:k=8", "topk:k=8"),
    ("topk:k=8.0", "topk:k=8"),
    ("ssmax:s_init=1e-3", "ssmax:s_init=0.001"),
])
def test_canonical_form(spec, want):
    assert attentions.canonical_spec(spec) == want
    assert attentions.canonical_spec(want) == want


@given(st.dictionaries(st.from_regex(r"[a-z]{1,6}", fullmatch=True),
                       st.one_of(st.integers(-10**6, 10**6),
                                 st.floats(allow_nan=False, allow_infinity=False, width=32)),
                       max_size=4))
def test_canonical_round_trips(params):
    text = canonical("x", params)
    name, raw = parse_spec(text)
    assert name == "x" and set(raw) == set(params)
    for key, value in params.items():
        assert float(raw[key]) == pytest.approx(float(value), rel=1e-11, abs=1e-300)
        assert format_value(float(raw[key])) == raw[key]


@pytest.mark.parametrize("spec,match", [
    ("entmx", r"unknown attention 'entmx'\. Did you mean 'entmax'\? Known: entmax, "),
    ("entmax:alpa=1.2", r"unknown parameter 'alpa' of attention 'entmax'.*Did you mean 'alpha'"),
    ("entmax:alpha=1", r"alpha=1.0 is outside \(1, 2\].*use 'softmax'"),
    ("entmax:alpha=abc", r"alpha='abc' is not a valid float"),
    ("entmax:alpha", r"write key=value"),
    ("topk:k=2.5", r"k='2.5' is not a valid int"),
    ("topk:k=0", r"k=0 must be at least 1"),
    ("asentmax:log_offset=1", r"log_offset=1.0 must be > 1"),
    ("", r"empty spec"),
])
def test_bad_specs_fail_with_the_fix(spec, match):
    with pytest.raises(SpecError, match=match):
        attentions.build(spec, n_heads=2, head_dim=4)


def test_bad_backend_and_heads():
    with pytest.raises(SpecError, match=r"unknown backend 'tritn'.*Did you mean 'triton'"):
        attentions.build("entmax", n_heads=2, head_dim=4, backend="tritn")
    with pytest.raises(SpecError, match=r"scaled_heads \[5\] outside 0..1"):
        attentions.build("ssmax", n_heads=2, head_dim=4, scaled_heads=[5])


def test_duplicate_names_refused():
    with pytest.raises(SpecError, match="'entmax' is registered already"):
        @attentions.register("entmax")
        class Other(attentions.Attention):
            pass


def test_register_requires_attention_subclass():
    with pytest.raises(SpecError, match="must subclass attentions.Attention"):
        @attentions.register("not_a_module")
        class Plain:
            pass


def test_plain_function_variant():
    @attentions.register("relu_attn_test")
    def relu_attn(q, k, v, *, causal, bias, power: float = 1.0):
        """relu attention (a test variant)."""
        z = torch.relu(q @ k.transpose(-1, -2)) ** power
        if causal:
            z = z.tril()
        return z @ v

    try:
        attn = attentions.build("relu_attn_test:power=2", n_heads=2, head_dim=4)
        assert attn.spec == "relu_attn_test:power=2"
        q, k, v = torch.randn(3, 1, 2, 5, 4).unbind(0)
        want = (torch.relu(q @ k.transpose(-1, -2)) ** 2).tril() @ v
        torch.testing.assert_close(attn(q, k, v), want)
        assert attentions.backends("relu_attn_test") == ["torch"]
        assert attentions.describe("relu_attn_test") == "relu attention (a test variant)."
        with pytest.raises(SpecError, match="unknown parameter 'pow'"):
            attentions.build("relu_attn_test:pow=2", n_heads=2, head_dim=4)
    finally:
        attentions.REGISTRY.unregister("relu_attn_test")


PLUGIN = textwrap.dedent('''
    import attentions

    @attentions.register("{name}")
    class Mine(attentions.Attention):
        """my attention: entmax at alpha 1.3 (a plugin)."""

        def normalizer(self):
            return attentions.Normalizer("entmax", alpha=1.3)
''')


def test_plugin_from_file(tmp_path):
    path = tmp_path / "my_attention.py"
    path.write_text(PLUGIN.format(name="plugin_file_test"))
    try:
        attentions.load_plugin(str(path))
        attn = attentions.build("plugin_file_test", n_heads=2, head_dim=4)
        q, k, v = torch.randn(3, 1, 2, 6, 4).unbind(0)
        assert attn(q, k, v).shape == (1, 2, 6, 4)
    finally:
        attentions.REGISTRY.unregister("plugin_file_test")
    with pytest.raises(SpecError, match="does not exist"):
        attentions.load_plugin(str(tmp_path / "missing.py"))


def _run(code, tmp_path, extra_path=()):
    env_path = ":".join([*map(str, extra_path)])
    cmd = [sys.executable, "-c", code]
    env = {"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)


def test_plugin_from_module_and_entry_point(tmp_path):
    """A real installed distribution (a dist-info on sys.path) exposing suite.attentions."""
    (tmp_path / "ep_attention.py").write_text(PLUGIN.format(name="plugin_ep_test"))
    (tmp_path / "mod_attention.py").write_text(PLUGIN.format(name="plugin_mod_test"))
    dist = tmp_path / "ep_attention-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-attention\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[suite.attentions]\nmine = ep_attention\n")
    import attentions as pkg
    root = __import__("pathlib").Path(pkg.__file__).parent.parent
    code = ("import attentions; assert 'plugin_ep_test' in attentions.names(); "
            "attentions.load_plugin('mod_attention'); print(sorted(attentions.names()))")
    out = _run(code, tmp_path, [tmp_path, root])
    assert out.returncode == 0, out.stderr
    assert "plugin_ep_test" in out.stdout and "plugin_mod_test" in out.stdout


def test_suite_list_shows_every_variant_with_backends(tmp_path):
    out = subprocess.run([sys.executable, "-m", "suite", "list"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("attention")]
    assert set(builtin_attentions()) <= {ln.split()[1] for ln in lines}
    for line in lines:
        assert "torch" in line.split("backends=")[1].split()[0]


def test_suite_list_with_plugin_and_bad_plugin(tmp_path):
    path = tmp_path / "p.py"
    path.write_text(PLUGIN.format(name="plugin_cli_test"))
    out = subprocess.run([sys.executable, "-m", "suite", "list", "--plugin", str(path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "plugin_cli_test" in out.stdout, out.stderr
    out = subprocess.run([sys.executable, "-m", "suite", "list", "--plugin", "no_such_mod_x"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "neither a .py file nor an importable module" in out.stderr
