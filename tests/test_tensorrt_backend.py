"""The TensorRT path.

Always: build options, batch profile, unsupported-node report, progress lines, ``okcell build-engine`` refusing
bad options before TensorRT is needed, output normalisation. With pycuda + cuda-python + a GPU: CUDA-graph
capture/replay of the GPU preprocessing. With TensorRT: an FP16 engine built from ``exported_model`` through the
CLI must match ONNX Runtime (cosine >= 0.999) and be refused once its sidecar says another TensorRT version.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data

from okcell.gpu import gpu_extra_missing
from edge.backends.tensorrt_backend import CudaGraphs, l2_normalise
from edge.cli import build_engine as cli_build_engine
from export.engine_sidecar import engine_sidecar_path
from okcell.sidecar import ModelSidecar
from export.tensorrt_build import BatchProfile, BuildOptions, BuildPhases, ParserIssue, batch_profile, unsupported_report
from okcell.schema import ConfigError
from gpu_support import require_cuda_device

GPU_EXTRA_MISSING = gpu_extra_missing()
needs_tensorrt = pytest.mark.skipif(GPU_EXTRA_MISSING is not None, reason=f"needs the gpu extra: missing {GPU_EXTRA_MISSING}")
PHOTOS = [skimage.data.astronaut(), skimage.data.camera(), skimage.data.coffee(), skimage.data.brick()]


@pytest.mark.parametrize(
    "options, message",
    [
        (BuildOptions(precision="bf16"), "precision must be one of fp32, fp16, int8"),
        (BuildOptions(workspace_mib=8), "--workspace: expected at least 16 MiB, found 8"),
        (BuildOptions(opt_level=7), "--opt-level: expected 0..5, found 7"),
        (BuildOptions(opt_batch=4, max_batch=2), "expected 1 <= opt <= max, found 4 and 2"),
        (BuildOptions(precision="int8"), "--int8 needs reference images"),
        (BuildOptions(calib_images=Path("/nowhere")), "--calib-images is only used with --int8"),
        (BuildOptions(precision="int8", calib_images=Path("/nowhere")), "--calib-images /nowhere: not a folder"),
    ],
)
def test_build_options_are_checked(options: BuildOptions, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        options.validate()


def test_int8_accepts_an_existing_cache_without_images(tmp_path: Path) -> None:
    cache = tmp_path / "model.calib"
    cache.write_bytes(b"TRT-100300-EntropyCalibration2\n")
    BuildOptions(precision="int8", calib_cache=cache).validate()
    assert BuildOptions(precision="int8", calib_cache=cache).to_json()["calib_cache"] == str(cache)


def test_batch_profile() -> None:
    options = BuildOptions(opt_batch=2, max_batch=16)
    assert batch_profile("pixel_values", [1, 3, 224, 224], options) is None
    profile = batch_profile("pixel_values", [-1, 3, 224, 224], options)
    assert profile == BatchProfile(1, 2, 16)
    assert profile.shapes([3, 224, 224]) == ((1, 3, 224, 224), (2, 3, 224, 224), (16, 3, 224, 224))
    with pytest.raises(ConfigError, match=r"dynamic channel/height/width \[-1, 3, -1, -1\]; export with a fixed --size"):
        batch_profile("pixel_values", [-1, 3, -1, -1], options)
    with pytest.raises(ConfigError, match=r"expected 4 dimensions \(B, 3, H, W\), found \[1, 224, 224\]"):
        batch_profile("pixel_values", [1, 224, 224], options)


def test_unsupported_node_report() -> None:
    report = unsupported_report(
        Path("dino.onnx"),
        [
            ParserIssue(412, "/blocks.11/norm1/LayerNormalization", "LayerNormalization", "Unsupported opset"),
            ParserIssue(-1, "", "", "Model has external data that could not be found"),
        ],
    )
    lines = report.splitlines()
    assert lines[0] == "dino.onnx: TensorRT cannot parse 2 node(s):"
    assert lines[1] == "  - node 412 '/blocks.11/norm1/LayerNormalization' (LayerNormalization): Unsupported opset"
    assert lines[2] == "  - model: Model has external data that could not be found"
    assert "unsupported operator(s): LayerNormalization" in lines[3]


def test_build_phases_give_bounded_lines_and_a_summary_per_phase() -> None:
    """The IProgressMonitor calls of a build (a top-level phase, nested phases of many steps) in a log."""
    out = io.StringIO()
    phases = BuildPhases(out)
    phases.start("Building engine", None, 40)
    for step in range(40):
        phases.start("Tactic search", "Building engine", 500)
        for tactic in range(500):
            phases.step("Tactic search", tactic)
        phases.finish("Tactic search")
        phases.step("Building engine", step)
    phases.finish("Building engine")
    lines = out.getvalue().splitlines()
    assert 10 <= len(lines) <= 12  # a line per tenth (and one per 30 s), not one per step
    assert all(line.startswith("build-engine: Building engine: ") for line in lines)
    assert lines[0].startswith("build-engine: Building engine: 4/40 steps") and lines[0].endswith("Tactic search 500/500")
    assert lines[-1].startswith("build-engine: Building engine: 40/40 steps in ")


def build_engine_cli(argv: list[str]) -> int:
    """``okcell build-engine ARGV`` through the command module's own parser and ``run``."""
    parser = argparse.ArgumentParser(prog="okcell build-engine")
    cli_build_engine.add_arguments(parser)
    return cli_build_engine.run(parser.parse_args(argv))


def test_build_engine_cli_refuses_bad_input_before_tensorrt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match=r"missing\.onnx: ONNX model not found"):
        build_engine_cli([str(tmp_path / "missing.onnx")])
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"onnx")
    with pytest.raises(ConfigError, match=r"--int8 needs reference images \(--calib-images DIR\)"):
        build_engine_cli([str(onnx), "--int8"])
    with pytest.raises(ConfigError, match=r"--opt-level: expected 0..5, found 9"):
        build_engine_cli([str(onnx), "--opt-level", "9"])
    with pytest.raises(SystemExit):
        build_engine_cli([str(onnx), "--fp16", "--int8"])
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.skipif(GPU_EXTRA_MISSING is None, reason="tensorrt and pycuda are installed here")
def test_build_engine_cli_without_tensorrt_says_what_is_missing(model: Path) -> None:
    """--int8 with only the default calibration cache (ENGINE.calib) passes the option checks; the build itself
    then stops with a clear message instead of an ImportError."""
    model.with_suffix(".calib").write_bytes(b"TRT-100300-EntropyCalibration2\n")
    with pytest.raises(ConfigError, match=r"needs TensorRT and pycuda on this machine: missing .*pycuda"):
        build_engine_cli([str(model), "--int8"])


def test_tensorrt_modules_import_without_tensorrt_or_pycuda() -> None:
    """The TensorRT/pycuda imports are lazy: a CPU machine (and `okcell run` with ONNX Runtime) never loads them."""
    modules = [
        "edge.cli.build_engine", "export.tensorrt_build", "export.int8_calibration",
        "export.engine_sidecar", "edge.backends.tensorrt_backend", "edge.backends.gpu_preprocess",
        "edge.backends.select",
    ]
    code = f"import sys; import {', '.join(modules)}; print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorrt', 'pycuda', 'cuda')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_l2_normalise_outputs_float32_unit_vectors() -> None:
    values = np.array([[3.0, 4.0], [0.0, 0.0]], np.float16)
    normalised = l2_normalise(values)
    assert normalised.dtype == np.float32
    np.testing.assert_allclose(normalised, [[0.6, 0.8], [0.0, 0.0]], atol=1e-6)


def test_cuda_graph_replays_the_preprocessing_with_new_frames() -> None:
    """Capture upload + kernel once, then replay it for other frames of the same shape: each result must equal
    the CPU reference for *that* frame (the graph reads the re-staged page-locked buffers)."""
    require_cuda_device("CUDA-graph check", modules=("cuda.bindings.runtime",))
    import pycuda.driver as cuda

    from edge.backends.gpu_preprocess import GpuPreprocessor

    sidecar = ModelSidecar(
        onnx_file="m.onnx", onnx_sha256="0" * 64, input_size=(224, 224), patch_size=14, feature_dim=384,
        embedding_dim=384, layers=(12,), layer_fusion="concat", dynamic_batch=False, opset=17, model_source={},
    )
    context = cuda.Device(0).retain_primary_context()
    context.push()
    try:
        prep = GpuPreprocessor(sidecar, np.float32, max_batch=1)
        stream = cuda.Stream()
        device = cuda.mem_alloc(prep.sample_bytes)
        host = cuda.pagelocked_empty((3, 224, 224), np.float32)
        graphs = CudaGraphs()
        frames = [skimage.data.astronaut(), skimage.data.immunohistochemistry(), skimage.data.chelsea()[:256, :256]]
        frames = [np.ascontiguousarray(f[:256, :256]) for f in frames]
        launched = []
        for frame in frames:
            prep.stage([frame])

            def enqueue(frame: np.ndarray = frame) -> None:
                prep.run([frame], int(device), stream)
                cuda.memcpy_dtoh_async(host, device, stream)

            graph_used = graphs.launch(frame.shape, stream.handle, enqueue)
            if not graph_used:
                enqueue()
            stream.synchronize()
            launched.append(graph_used)
            np.testing.assert_array_equal(host, prep.reference.frame(frame))
        assert launched == [False, True, True]
        graphs.close()
        prep.close()
        device.free()
    finally:
        cuda.Context.pop()



def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@needs_tensorrt
def test_fp16_engine_matches_onnxruntime(model: Path, tmp_path: Path) -> None:
    from edge.backends.onnxruntime_backend import OnnxRuntimeExtractor
    from edge.backends.select import open_extractor

    engine = tmp_path / "model.engine"
    assert build_engine_cli([str(model), "--fp16", "-o", str(engine), "--workspace", "1024"]) == 0
    info = json.loads(engine_sidecar_path(engine).read_text())
    assert info["precision"] == "fp16" and info["input_size"] == [224, 224]

    reference = OnnxRuntimeExtractor(model)
    trt_extractor = open_extractor(model, backend="auto", engine_path=engine)
    assert trt_extractor.backend_name == "tensorrt"
    try:
        expected = reference.extract(PHOTOS)
        got = trt_extractor.extract(PHOTOS)
        assert got.patches.shape == expected.patches.shape and got.patches.dtype == np.float32
        assert got.grid == expected.grid and set(got.timings_ms) == {"preprocess", "backbone"}
        assert _cosine(got.embedding, expected.embedding).min() >= 0.999
        assert _cosine(got.patches, expected.patches).mean() >= 0.999
    finally:
        trt_extractor.close()
        reference.close()

    info["tensorrt_version"] = "9.0.0"
    engine_sidecar_path(engine).write_text(json.dumps(info))
    with pytest.raises(ConfigError, match=r"built with TensorRT 9\.0\.0, .* okcell build-engine"):
        open_extractor(model, backend="tensorrt", engine_path=engine)
