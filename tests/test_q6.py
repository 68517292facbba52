"""q4 files with a q6 classifier (v3 weight_type 4) in run.c, beside the older q4 files (weight_type 3,
the classifier in q8_0), which stay readable: both run.c's logits against PyTorch's for the same file,
and the q6 classifier's place between the two in size and error. (test_run_c runs weight_type 4 as its
"v3_q4" format in every config and build; test_export has its bytes; test_run_bad_input its bad headers.)"""
import numpy as np
import pytest
import torch

from binfile import CLASSIFIER, layout, load_bin, model_export, q6_levels, read_header
from test_run_c import CONFIGS, builds, c_logits, check_logits, make_model  # noqa: F401 (builds: a fixture)


@pytest.mark.parametrize("cfg", ["gqa_tied_v97", "mqa_untied_v131"])
@pytest.mark.parametrize("dtype", ["q4_q8", "q4"])
def test_q4_files_old_and_new_match_pytorch(builds, cfg, dtype, tmp_path):
    """An old q4 file (q8_0 classifier) still runs; a new one (q6 classifier, expanded to int8 at load) runs
    its classifier and embedding lookup through the same q8_0 code: both match PyTorch on the file's weights."""
    model = make_model(CONFIGS[cfg])
    path = tmp_path / f"{cfg}_{dtype}.bin"
    model_export(model, path, version=3, dtype=dtype)
    assert read_header(path)["weight_type"] == dtype
    check_logits(builds, model, path, "v3_q4", tmp_path)


def q6_as_q8_0(q4_path, out):
    """out: a weight_type 3 file (q8_0 classifier) holding q4_path's q6 levels and scales exactly, the
    matrix run.c's expand_q6 makes; out must already be the q4_q8 export of the same model (same layers)."""
    a, b = bytearray(q4_path.read_bytes()), bytearray(out.read_bytes())
    at, gs = {e[0]: e for e in layout(read_header(q4_path))[0]}, read_header(out)["group_size"]
    for name, shape, kind, data_off, scales_off in layout(read_header(out))[0]:
        if name not in CLASSIFIER:
            continue
        n = shape[0] * shape[1]
        _, _, kind_a, data_a, scales_a = at[name]
        assert (kind, kind_a) == ("q8_0", "q6")
        packed = torch.frombuffer(bytearray(a[data_a:data_a + n // 4 * 3]), dtype=torch.uint8)
        b[data_off:data_off + n] = q6_levels(packed).to(torch.int8).numpy().tobytes()
        b[scales_off:scales_off + n // gs * 4] = a[scales_a:scales_a + n // gs * 4]
    out.write_bytes(bytes(b))


@pytest.mark.parametrize("cfg", ["gqa_tied_v97", "mha_gs32_theta", "mqa_untied_v131"])
def test_q6_read_in_6_bits_gives_the_bits_of_its_q8_0_expansion(builds, cfg, tmp_path):
    """Where kernels.h reads the q6 classifier as stored (AVX-512 VBMI, group sizes of 32 and more), every
    logit is the same bits as for the q8_0 matrix of the same levels that other builds expand it into:
    the int sums are exact and scaled in the same order. Embedding lookups included (the tied config)."""
    model = make_model(CONFIGS[cfg])
    q4, q8 = tmp_path / "q6.bin", tmp_path / "q8.bin"
    model_export(model, q4, version=3, dtype="q4")
    model_export(model, q8, version=3, dtype="q4_q8")
    q6_as_q8_0(q4, q8)
    ids = torch.randint(0, model.args.vocab_size, (model.args.max_seq_len,), generator=torch.Generator().manual_seed(5)).tolist()
    for b in builds:
        assert np.array_equal(c_logits(b, q4, ids, tmp_path), c_logits(b, q8, ids, tmp_path)), b
        assert np.array_equal(c_logits(b, q4, ids[:3], tmp_path), c_logits(b, q8, ids[:3], tmp_path)), b  # decode


def test_q6_classifier_sits_between_q4_and_q8(tmp_path):
    """Against the fp32 model, the q6 classifier's error is about 4 times q8_0's (2 bits fewer) and well
    under q4's (the layer matrices, 2 bits fewer again), and its file is smaller than the q8_0 one by a
    quarter of the classifier's int8 bytes."""
    model = make_model(CONFIGS["mqa_untied_v131"])
    files = {d: tmp_path / f"{d}.bin" for d in ("q4_q8", "q4")}
    err = {}
    for d, path in files.items():
        model_export(model, path, version=3, dtype=d)
        back = load_bin(path).state_dict()
        err[d] = {n: ((back[n] - w).pow(2).mean() / w.pow(2).mean()).item() for n, w in model.state_dict().items()
                  if n in ("output.weight", "layers.0.attention.wq.weight")}
    assert 8 < err["q4"]["output.weight"] / err["q4_q8"]["output.weight"] < 32
    assert err["q4"]["output.weight"] < err["q4"]["layers.0.attention.wq.weight"] / 4
    assert err["q4"]["layers.0.attention.wq.weight"] == err["q4_q8"]["layers.0.attention.wq.weight"]  # same q4 layers
    n_cls = 2 * model.args.vocab_size * model.args.dim  # untied: embeddings and classifier
    saved = files["q4_q8"].stat().st_size - files["q4"].stat().st_size
    assert n_cls // 4 <= saved < n_cls // 4 + 4 * 64  # up to the 64-byte alignment padding


def test_q4_file_to_hugging_face_carries_its_dequantised_weights(tmp_path):
    """A Hugging Face export of a q4 .bin holds the weights load_bin reads, the q6 classifier's included."""
    from hf import hf_export, hf_import
    model = make_model(CONFIGS["mqa_untied_v131"])
    model_export(model, tmp_path / "m.bin", version=3, dtype="q4")
    stored = load_bin(tmp_path / "m.bin")
    hf_export(stored, tmp_path / "hf")
    back = hf_import(tmp_path / "hf").state_dict()
    for name, w in stored.state_dict().items():
        assert torch.equal(back[name], w), name
    assert not torch.equal(back["output.weight"], model.state_dict()["output.weight"])  # rounded, not the original
