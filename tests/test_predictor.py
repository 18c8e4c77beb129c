import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest

from hwloop import tables
from hwloop.layers import LayerConfig
from hwloop.predictor import Predictor, PredictorError, features, rules
from hwloop.predictor.evaluation import collections_agree, evaluate, holdout_scores, noise_floor, splits
from hwloop.predictor.latency import LatencyModel, vector_unit
from hwloop.predictor.selection import select
from hwloop.schedules import PolicyError, parse_policy, policy_of_rows
from hwloop.trust import disagree


@pytest.fixture(scope="module")
def saved(local_predictor, tmp_path_factory):
    directory = tmp_path_factory.mktemp("predictors")
    local_predictor.save(directory)
    return directory


def test_held_out_rows_are_predicted_above_the_floor(local_predictor, local_table):
    """Every row predicted by a booster that did not see it (4-fold by config): mean error under
    60 %, 30 % of rows within ±15 % (a shared, noisy machine timing microsecond layers with 3
    repeats), and less error than latency-proportional-to-FLOPs, which misses the staircases."""
    from hwloop.predictor.evaluation import scores
    from hwloop.predictor.report import out_of_fold

    rows = tables.read(local_table, "local")
    rows = rows[rows.status == "ok"].reset_index(drop=True)
    held_out = scores(rows.latency_ms, out_of_fold(rows))
    assert held_out["mape"] <= 0.6 and held_out["within_15"] >= 0.3, held_out
    per_mac = np.median(rows.latency_ms / rows.macs)
    flops_mape = np.mean(np.abs(rows.macs * per_mac / rows.latency_ms - 1))
    assert held_out["mape"] < flops_mape, (held_out["mape"], flops_mape)

    metrics = local_predictor.meta["metrics"]
    assert set(metrics) == {"config", "unseen_channels", "unseen_shapes"}
    for split in metrics.values():
        assert split["rows"] + split["train_rows"] == len(rows) and split["noise"]["within_10"] > 0
        assert set(split["ops"]) <= {"conv2d", "depthwise_conv2d", "linear"}


def test_held_out_scores_count_the_rows_on_a_path_no_training_row_took(local_table):
    rows = select(tables.read(local_table, "local"), "t", parse_policy("default").name).rows

    def without_depthwise(train, seed):
        return LatencyModel.train(train[train.op != "depthwise_conv2d"], seed)

    lanes, registers = vector_unit(rows.target.iloc[0])
    path = rules.path_names(rules.quantities(features.from_frame(rows), lanes, registers)["path"])
    masks = splits(rows, 0)
    for name, split in holdout_scores(rows, 0, without_depthwise).items():
        learnt = set(path[~masks[name] & (rows.op != "depthwise_conv2d").to_numpy()])
        unlearnt = [p for p in path[masks[name]] if p not in learnt]
        assert split["unlearnt_paths"] == {p: unlearnt.count(p) for p in set(unlearnt)}, name
        assert unlearnt.count("width") == split.get("ops", {}).get("depthwise_conv2d", {}).get("rows", 0)


def test_metadata_says_what_it_was_trained_on(local_predictor, local_table):
    rows = tables.read(local_table, "local")
    meta = local_predictor.meta
    assert (local_predictor.device, local_predictor.schedule) == ("local", parse_policy("default").name)
    assert local_predictor.protocol_id == rows.protocol_id.iloc[0]
    assert meta["rows"] == int((rows.status == "ok").sum()) and len(meta["table_sha256"]) == 64
    assert meta["lanes"] in (4, 8, 16) and len(meta["features"]) == local_predictor.model.booster.num_features()


def test_save_then_load_predicts_the_same(local_predictor, saved):
    configs = [LayerConfig("conv2d", 16, c, 16, 16, kernel=3, padding=1) for c in range(1, 65)]
    loaded = Predictor.load("local", saved)
    assert np.array_equal(loaded.predict(configs), local_predictor.predict(configs))
    assert loaded.meta["table_sha256"] == local_predictor.meta["table_sha256"]
    assert not any(saved.rglob("*.pkl")) and (saved / "local" / "booster.ubj").is_file()


def test_latency_grid_matches_predict_and_is_cached(local_predictor):
    config = LayerConfig("depthwise_conv2d", 16, 16, 16, 16, kernel=3, padding=1, groups=16)
    grid = local_predictor.latency_grid(config, [8, 12, 16], [8, 12, 16])
    assert grid.shape == (3, 3) and not grid.flags.writeable
    diagonal = local_predictor.predict(
        [LayerConfig("depthwise_conv2d", c, c, 16, 16, kernel=3, padding=1, groups=c) for c in (8, 12, 16)]
    )
    assert np.allclose(np.diag(grid), diagonal)
    assert local_predictor.latency_grid(config, [8, 12, 16], [8, 12, 16]) is grid


def _copy(saved, tmp_path, device="local"):
    shutil.copytree(saved / "local", tmp_path / device)
    return tmp_path / device


def test_corrupt_booster_is_refused(saved, tmp_path):
    booster = _copy(saved, tmp_path) / "booster.ubj"
    data = bytearray(booster.read_bytes())
    data[len(data) // 2] ^= 0xFF
    booster.write_bytes(bytes(data))
    with pytest.raises(PredictorError, match=r"booster\.ubj: corrupt"):
        Predictor.load("local", tmp_path)


def test_unreadable_metadata_is_refused(saved, tmp_path):
    (_copy(saved, tmp_path) / "predictor.json").write_text('{"format_version": 1, "device": "lo')
    with pytest.raises(PredictorError, match=r"predictor\.json: not a readable predictor file"):
        Predictor.load("local", tmp_path)


def test_predictor_of_another_device_or_schedule_or_newer_format_is_refused(saved, tmp_path):
    _copy(saved, tmp_path, "pi4")
    with pytest.raises(PredictorError, match=r"'device': the predictor is for 'local', not 'pi4'"):
        Predictor.load("pi4", tmp_path)
    with pytest.raises(PredictorError, match=r"'schedule': trained on 'default@[0-9]+' rows, not 'tuned:64'"):
        Predictor.load("local", saved, schedule="tuned:64")
    meta_path = _copy(saved, tmp_path / "newer") / "predictor.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "format_version": 99}))
    with pytest.raises(PredictorError, match="format_version.*newer hwloop"):
        Predictor.load("local", tmp_path / "newer")
    with pytest.raises(PredictorError, match="no predictor for device 'nope'"):
        Predictor.load("nope", saved)


@pytest.fixture
def untuned_table(untuned_dir):
    return tables.read(untuned_dir, "local")


def test_rows_of_another_schedule_policy_are_not_mixed(local_predictor, local_table, untuned_table):
    with pytest.raises(
        PredictorError, match="no rows of schedule policy 'default@.*'untuned': 2 rows.*one schedule policy only"
    ):
        evaluate(local_predictor, untuned_table, "untuned table")
    with pytest.raises(PredictorError, match="no rows of schedule policy 'default@"):
        Predictor.fit(untuned_table, "local")
    mixed = tables.read(local_table, "local")

    both = pd.concat([mixed, untuned_table], ignore_index=True)
    scored = evaluate(local_predictor, both, "mixed table")
    assert scored["rows"] == int((mixed.status == "ok").sum()) and scored["rows_ignored"] == 2 + int(
        (mixed.status != "ok").sum()
    )


def test_rows_and_predictors_of_earlier_default_rules_are_refused(local_table, saved, tmp_path):
    earlier = tables.read(local_table, "local").assign(schedule="default")
    with pytest.raises(
        PredictorError, match=r"no rows of schedule policy 'default@.*'default': .*earlier rules: collect them again"
    ):
        Predictor.fit(earlier, "local")
    for name in ("default", "default@1"):
        with pytest.raises(PolicyError, match=rf"'{name}': timed under an earlier revision of the default rules"):
            policy_of_rows(name)
    assert policy_of_rows(parse_policy("default").name) == parse_policy("default")


def test_rows_of_several_protocols_are_refused(local_table):
    rows = tables.read(local_table, "local")
    rows.loc[rows.index[::2], "protocol_id"] = "another"
    with pytest.raises(PredictorError, match="several protocols.*--protocol"):
        Predictor.fit(rows, "local", evaluate=False)
    fitted = Predictor.fit(rows, "local", protocol_id="another", evaluate=False)
    assert fitted.protocol_id == "another" and fitted.meta["rows"] == len(rows[rows.protocol_id == "another"])


def test_a_config_measured_in_several_passes_counts_once_by_its_fastest(local_table):
    rows = tables.read(local_table, "local")
    rows = rows[rows.status == "ok"]
    slower, faster = _scaled(rows.iloc[:5], 1.5), _scaled(rows.iloc[5:8], 0.5)
    selection = select(pd.concat([rows, slower, faster], ignore_index=True), "t", parse_policy("default").name)
    chosen = selection.rows
    assert len(chosen) == len(rows) and chosen.config_id.is_unique and selection.measurements == len(rows) + 8
    by_config = chosen.set_index("config_id").latency_ms
    fastest = [*rows.latency_ms.iloc[:5], *(rows.latency_ms.iloc[5:8] * 0.5)]
    assert np.allclose(by_config[rows.config_id.iloc[:8]], fastest)

    floor = noise_floor(chosen)["passes"]
    assert floor["samples"] == 8 and floor["within_5"] == 0.0
    assert floor["mape"] == pytest.approx(0.5 * 5 / 8 + 1.0 * 3 / 8)


def test_a_row_whose_trials_disagree_gives_way_to_a_row_of_its_config_whose_trials_agree(local_table):
    rows = tables.read(local_table, "local")
    rows = rows[(rows.status == "ok") & ~disagree(rows)].reset_index(drop=True)
    scattered = _scaled(rows.iloc[:4], 0.8).assign(
        trial_latencies_ms=[[t * 0.5, t, t * 1.5] for t in rows.latency_ms.iloc[:4] * 0.8]
    )
    selection = select(pd.concat([scattered, rows], ignore_index=True), "t", parse_policy("default").name)
    assert selection.measurements == len(rows)
    assert np.allclose(selection.rows.set_index("config_id").latency_ms[rows.config_id], rows.latency_ms)
    alone = select(pd.concat([scattered, rows.iloc[4:]], ignore_index=True), "t", parse_policy("default").name)
    assert alone.measurements == len(rows) and set(scattered.config_id) <= set(alone.rows.config_id)


def _scaled(rows: pd.DataFrame, factor: float) -> pd.DataFrame:
    """``rows`` measured again ``factor`` times as long, trials and all."""
    return rows.assign(
        latency_ms=rows.latency_ms * factor,
        trial_latencies_ms=[[t * factor for t in trials] for trials in rows.trial_latencies_ms],
    )


def test_a_second_collection_is_scored_against_the_first_on_the_configs_both_hold():
    first = pd.DataFrame({"config_id": ["a", "b", "c", "d"], "latency_ms": [1.0, 2.0, 4.0, 8.0]})
    second = pd.DataFrame({"config_id": ["b", "c", "d", "e"], "latency_ms": [2.04, 4.5, 6.0, 1.0]})
    agree = collections_agree(first, second)
    assert agree["configs"] == 3
    assert agree["within_5"] == pytest.approx(1 / 3) and agree["within_15"] == pytest.approx(2 / 3)
    assert agree["mape"] == pytest.approx((0.02 + 0.125 + 0.25) / 3)


@pytest.mark.parametrize(("lanes", "registers", "fmas", "steps"), [(16, 32, 73728, 4608), (8, 16, 110592, 13824)])
def test_rules_count_the_work_of_the_default_schedules(lanes, registers, fmas, steps):
    """A 3x3 conv 16 -> 20 at 16x16 runs output channels in whole vectors: with 16 lanes and 24
    accumulators the rules take a tile of 2 vectors (32 channels) by 8 positions, with 8 lanes and 8
    accumulators 1 vector (3 tiles of 8 channels) by 8 positions."""
    configs = [
        LayerConfig("conv2d", 16, 20, 16, 16, kernel=3, padding=1),
        LayerConfig("conv2d", 32, 40, 8, 8),
        LayerConfig("depthwise_conv2d", 24, 24, 14, 14, kernel=3, padding=1, groups=24),
        LayerConfig("linear", 100, 10),
    ]
    work = rules.quantities(features.arrays(configs), lanes, registers)
    pointwise = "spatial" if lanes == 16 else "channel"  # positions vectorised on 512-bit targets only
    assert [rules.PATHS[p] for p in work["path"]] == ["channel", pointwise, "width", "reduction"]
    assert (work["vector_fmas"][0], work["steps"][0]) == (fmas, steps)
    assert (work["vector_fmas"] * lanes >= [c.macs for c in configs]).all()  # padding only adds work


@pytest.mark.parametrize("mcpu", ["haswell", "skylake-avx512"])
def test_rules_take_the_path_the_default_schedule_takes(mcpu):
    """The work model prices each layer on the rule the schedule applies to its kernel: a pointwise
    conv whose positions fill whole vectors vectorises them on AVX-512 while its input fits the
    rules' bound, and repacks its weights otherwise."""
    import tvm

    from hwloop.kernels import prim_module
    from hwloop.schedules.default import cpu_model, schedule

    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": mcpu})
    cpu = cpu_model(target)
    configs = [
        LayerConfig("conv2d", 32, 40, 8, 8),
        LayerConfig("conv2d", 24, 17, 4, 4),
        LayerConfig("conv2d", 16, 16, 28, 28, activation="relu"),
        LayerConfig("conv2d", 256, 64, 32, 32),  # 1 MiB of input
        LayerConfig("conv2d", 257, 64, 32, 32),
        LayerConfig("conv2d", 16, 20, 16, 16, kernel=3, padding=1),
        LayerConfig("conv2d", 12, 36, 6, 6, groups=3),
        LayerConfig("depthwise_conv2d", 24, 24, 14, 14, kernel=3, padding=1, groups=24),
        LayerConfig("linear", 100, 10),
    ]
    work = rules.quantities(features.arrays(configs), cpu.lanes("float32"), cpu.registers)
    paths = [rules.PATHS[p] for p in work["path"]]
    repacked = ["weight_global" in schedule(prim_module(c), target)["main"].script() for c in configs]
    assert repacked == [path == "channel" for path in paths]
    assert paths[:5] == ["spatial" if mcpu == "skylake-avx512" else "channel"] * 4 + ["channel"]


@pytest.mark.parametrize("mcpu", ["haswell", "skylake-avx512"])
def test_rules_take_the_register_tile_the_default_schedule_takes(mcpu):
    """The work model's tile (vectors by rows by columns) is the schedule's, down a column too
    (tiny reductions into less than a vector, strided or not, and rows cut to bound the write-back)."""
    import tvm

    from hwloop.kernels import prim_module
    from hwloop.schedules.default import cpu_model, schedule

    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": mcpu})
    cpu = cpu_model(target)
    configs = [
        LayerConfig("conv2d", cin, cout, size, size, kernel=1, stride=stride)
        for cin, cout, size, stride in ((7, 4, 14, 1), (4, 12, 14, 1), (8, 4, 14, 1), (6, 4, 28, 2), (5, 3, 28, 2))
    ] + [LayerConfig("conv2d", 16, 20, 16, 16, kernel=3, padding=1), LayerConfig("conv2d", 3, 40, 10, 10, stride=2)]
    work = rules.quantities(features.arrays(configs), cpu.lanes("float32"), cpu.registers)
    for config, tile in zip(configs, work["tile"]):
        script = schedule(prim_module(config), target)["main"].script()
        unrolled = re.findall(r"for (?:yy|xx|ff)_1(?:_0)? in T\.unroll\(([0-9]+)\)", script)
        assert np.prod([int(extent) for extent in unrolled]) == tile, config.id


@pytest.mark.parametrize("mcpu", ["haswell", "skylake-avx512"])
def test_rules_count_the_accumulators_tvm_allocates_on_every_call(mcpu):
    """``workspaces`` is how many accumulators the lowered layer allocates (and frees) per call, each as
    often as the loops around it run: per parallel tile from 1 KiB, a tile of one position's whatever
    its size; not its repacked weight or padded input."""
    import tvm
    from lowering import lowered_script

    from hwloop.schedules.default import cpu_model

    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": mcpu})
    cpu = cpu_model(target)
    configs = [
        LayerConfig("conv2d", 8, 8, 28, 28, kernel=3, padding=1),
        LayerConfig("conv2d", 64, 64, 14, 14, kernel=3, padding=1),
        LayerConfig("conv2d", 4, 49, 4, 4, kernel=3, padding=1),
        LayerConfig("conv2d", 129, 123, 2, 2, kernel=3, padding=1),  # weight walked once: channel tiles parallel
        LayerConfig("conv2d", 204, 64, 1, 1),  # a tile of one position
        LayerConfig("conv2d", 10, 20, 28, 28, stride=2),
        *(
            LayerConfig("depthwise_conv2d", 96, 96, size, size, kernel=3, stride=stride, padding=1, groups=96)
            for size, stride in ((7, 1), (14, 1), (14, 2), (16, 2), (48, 1))  # 48: a tile of 8 x 48 outputs
        ),
        LayerConfig("conv2d", 64, 64, 16, 16),  # positions vectorised on AVX-512
        LayerConfig("linear", 64, 10, batch=8),
    ]
    counted = rules.quantities(features.arrays(configs), cpu.lanes("float32"), cpu.registers)["workspaces"]
    for config, count in zip(configs, counted):
        assert _accumulators(lowered_script(config, target)) == count, config.id
    assert counted.max() > 0 and counted.min() == 0


def _accumulators(script: str) -> int:
    """Workspaces other than a padded input or repacked weight that a lowered function's script
    allocates per call, each times the extents of the loops around it."""
    loops, total = [], 0
    for line in script.splitlines():
        indent = len(line) - len(line.lstrip())
        loops = [(i, extent) for i, extent in loops if i < indent]
        loop = re.match(r"\s*for [\w, ]+ in (T\.grid|T\.\w+|range)\(([0-9, ]+)\):", line)
        if loop:
            extents = [int(e) for e in loop.group(2).split(",")]
            grid = loop.group(1) == "T.grid"
            loops.append((indent, int(np.prod(extents)) if grid else extents[-1] - (len(extents) - 1) * extents[0]))
        elif "TVMBackendAllocWorkspace" in line and not line.lstrip().startswith(("pad_temp", "weight")):
            total += int(np.prod([trips for _, trips in loops]))
    return total


def test_features_of_a_kernel_that_is_not_square_count_its_height_and_width():
    """A 1x7 and a 7x1 conv do the same multiply-adds; the 7x1 reads three more rows of halo above
    and below each tile of rows, the 1x7 three more columns of padding each side of every row."""
    wide, tall = (
        LayerConfig("conv2d", 16, 32, 12, 12, kernel=kh, kernel_w=kw, padding=kh // 2, padding_w=kw // 2)
        for kh, kw in ((1, 7), (7, 1))
    )
    cols = features.arrays([wide, tall])
    work = rules.quantities(cols, 8, 16)
    assert work["vector_fmas"][0] == work["vector_fmas"][1] and (work["vector_fmas"] * 8 >= wide.macs).all()
    assert work["input_bytes"][0] != work["input_bytes"][1]
    x = features.matrix(cols, 8, work)
    names = features.names(8)
    assert x[0, names.index("log_flops")] == pytest.approx(np.log2(2 * wide.macs))
    assert list(x[:, names.index("kernel_w")]) == [7, 1] and list(x[:, names.index("output_w")]) == [12, 12]


def test_the_work_model_counts_the_outputs_a_fused_activation_computes():
    configs = [
        LayerConfig("depthwise_conv2d", 16, 16, 8, 8, kernel=3, padding=1, groups=16, activation=a)
        for a in ("none", "silu", "relu6", "gelu")
    ]
    work = rules.quantities(features.arrays(configs), 8, 16)
    outputs = 16 * 8 * 8
    assert list(work["exp_outputs"]) == [0, outputs, 0, outputs] and list(work["clip_outputs"]) == [0, 0, outputs, 0]
    assert (work["vector_fmas"] == work["vector_fmas"][0]).all()


def test_rows_written_before_kernel_widths_and_activations_were_recorded_read_as_square_and_plain():
    configs = [LayerConfig("conv2d", c, 24, 14, 14, kernel=3, padding=1) for c in (8, 16)]
    configs.append(LayerConfig("conv2d", 8, 24, 14, 14, kernel=1, kernel_w=3, padding=0, padding_w=1))
    frame = pd.DataFrame([c.to_dict() for c in configs])
    old = frame.assign(kernel_w=[None, None, 3], padding_w=[None, None, 1], activation=None)  # nulls: NaN, None
    older = old.iloc[:2].drop(columns=["kernel_w", "padding_w", "activation"])
    for cols in (features.from_frame(old), features.from_frame(older)):
        n = len(cols["op"])
        assert all((cols[c] == features.arrays(configs[:n])[c]).all() for c in features.COLUMNS)
    assert features.shape_key(old).nunique() == 2


def test_the_work_model_grows_with_the_input_size_and_channels(local_table):
    """The work model is what carries a prediction to an unseen input size: a conv at 12x12 is
    predicted between the same conv at 8x8 and at 16x16, and more channels never cost less."""
    rows = select(tables.read(local_table, "local"), "t", parse_policy("default").name).rows
    model = LatencyModel.train(rows)
    lanes, registers = vector_unit(rows.target.iloc[0])
    assert (model.lanes, model.registers) == (lanes, registers)
    sizes = [LayerConfig("conv2d", 16, 24, size, size, kernel=3, padding=1) for size in (8, 12, 16)]
    widths = [LayerConfig("conv2d", 16, c, 16, 16, kernel=3, padding=1) for c in range(lanes, 4 * lanes + 1, lanes)]
    for configs, name in ((sizes, "sizes"), (widths, "widths")):
        work = model.work_ms(features.arrays(configs))
        assert (np.diff(work) > 0).all(), (name, work)


def test_a_predictor_of_an_earlier_format_is_refused(saved, tmp_path):
    meta_path = _copy(saved, tmp_path) / "predictor.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "format_version": 1}))
    with pytest.raises(PredictorError, match="format_version.*earlier hwloop.*fit it again"):
        Predictor.load("local", tmp_path)


def test_a_predictor_of_another_work_model_is_refused(saved, tmp_path):
    meta_path = _copy(saved, tmp_path) / "predictor.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "work": {path: c[:-2] + c[-1:] for path, c in meta["work"].items()}}))
    with pytest.raises(PredictorError, match="field 'work'.*another work model.*fit it again"):
        Predictor.load("local", tmp_path)


def test_sizes_between_hold_out_the_sizes_inside_the_measured_range():
    rows = pd.DataFrame(
        [
            {**LayerConfig("conv2d", c, c, size, size, kernel=3, padding=1).to_dict(), "config_id": i}
            for i, (c, size) in enumerate((c, s) for c in (8, 16, 24) for s in (7, 14, 21, 28))
        ]
    )
    rows = pd.concat([rows, pd.DataFrame([{**LayerConfig("conv2d", 8, 8, 14, 14).to_dict(), "config_id": 99}])])
    held = rows[splits(rows)["sizes_between"]]
    assert set(held.input_h) == {14, 21} and set(held.kernel) == {3}  # the lone 1x1 conv has no size around it


def test_unseen_channels_never_hold_out_a_count_an_op_never_varies_from():
    convs = [LayerConfig("conv2d", c, c + 4, 8, 8, kernel=3, padding=1) for c in range(2, 20)]
    classifier = [LayerConfig("linear", c, 10) for c in range(2, 20)]
    rows = pd.DataFrame([{**c.to_dict(), "config_id": i} for i, c in enumerate(convs + classifier)])
    for seed in range(20):
        test = splits(rows, seed)["unseen_channels"]
        assert (rows[~test].op == "linear").any()  # the classifier keeps rows to learn from
        counts = set(rows.in_channels) | set(rows.out_channels)
        held = {c for c in counts if test[(rows.in_channels == c) | (rows.out_channels == c)].all()}
        assert 10 not in held and all(test == (rows.in_channels.isin(held) | rows.out_channels.isin(held)))
