"""What a researcher's stack expects: trackers (--report-to), Hugging Face datasets (--data hf:),
LoRA (--lora-rank), a config file (--config). Each read back independently of the code that wrote
it: the trackers' own files, the adapters' tensors, the dataset rows written here."""
import dataclasses
import glob
import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import data
import grpo
import ropd
import track
from test_ropd import metrics, tiny_args, weights

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------------------------
# --config
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["paper", "official"])
def test_the_config_files_are_the_presets(name):
    base = ["--student", "Qwen/Qwen3-4B", "--teacher", "openai:m", "--out", "x"]
    a = ropd.parse_args(["--config", str(ROOT / "configs" / f"{name}.toml"), *base])
    b = ropd.parse_args(["--preset", name, *base])
    differ = {k for k, v in dataclasses.asdict(a).items() if v != getattr(b, k)}
    assert differ == {"config", "preset"}
    # a flag still wins over the file
    assert ropd.parse_args(["--config", str(ROOT / "configs" / f"{name}.toml"), "--lr", "3e-6", *base]).lr == 3e-6


@pytest.mark.parametrize("text,message", [
    ("lr = 1e-5\nlearning_rate = 2\n", "unknown setting learning_rate"),
    ("steps = 'ten'\n", "steps = 'ten' is not a int"),
    ("betas = [0.9]\n", "betas = [0.9] is not a"),
    ("steps = \n", "not valid TOML"),
])
def test_a_bad_config_is_one_line(tmp_path, capsys, text, message):
    (tmp_path / "c.toml").write_text(text)
    assert ropd.main(["--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_a_redacted_secret_in_a_config_must_be_given_again(tmp_path, capsys):
    (tmp_path / "args.json").write_text(json.dumps({"teacher": "openai:m@http://user:***@host/v1"}))
    assert ropd.main(["--config", str(tmp_path / "args.json"), "--out", str(tmp_path / "r")]) == 2
    assert "its teacher held a secret that was not saved; give --teacher" in capsys.readouterr().err


def test_a_runs_args_json_reruns_it(tiny_world, tmp_path):
    assert ropd.main(tiny_args(tiny_world, tmp_path, "--steps", "1", "--temperature", "0.8")) == 0
    first = metrics(tmp_path / "run")[0]
    assert ropd.main(["--config", str(tmp_path / "run" / "args.json"), "--out", str(tmp_path / "again")]) == 0
    again = metrics(tmp_path / "again")[0]
    assert json.loads((tmp_path / "again" / "args.json").read_text())["temperature"] == 0.8
    drop = lambda m: {k: v for k, v in m.items() if k not in ("seconds", "usage")}  # noqa: E731
    assert drop(again) == drop(first)
    # the same cache (args.json names it): the rerun paid for nothing
    assert all(set(u) == {"cache_hits"} for u in again["usage"].values()) and "calls" in first["usage"]["reference"]


# ----------------------------------------------------------------------------------------------
# --report-to
# ----------------------------------------------------------------------------------------------

def wandb_history(run_dir: Path) -> list[dict]:
    """The history records of an offline wandb run, read from its .wandb file (LevelDB-style log
    records after a 7-byte header; each a wandb Record protobuf)."""
    from wandb.proto import wandb_internal_pb2 as pb
    raw = Path(glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))[0]).read_bytes()
    pos, block, chunks, buf = 7, 32768, [], b""
    while pos + 7 <= len(raw):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (kind == 0 and length == 0):
            pos += left
            continue
        piece, pos = raw[pos + 7:pos + 7 + length], pos + 7 + length
        buf = piece if kind in (1, 2) else buf + piece
        if kind in (1, 4):
            chunks.append(buf)
    out = []
    for c in chunks:
        rec = pb.Record()
        rec.ParseFromString(c)
        if rec.WhichOneof("record_type") == "history":
            out.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
    return out


def test_trackers_get_each_steps_metrics(tiny_world, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    pytest.importorskip("trackio")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    assert ropd.main(tiny_args(tiny_world, tmp_path, "--report-to", "tensorboard,wandb,trackio",
                               "--save-every", "2")) == 0
    lines = metrics(tmp_path / "run")
    want = {(m["step"], k): v for m in lines for k, v in track.scalars(m).items()}
    assert {"train/pg_loss", "train/reward_mean", "judge/usage/reference/calls", "time/total"} <= {k for _, k in want}
    # TensorBoard: the event file read back
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    got = {(e.step, tag): e.value for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag)}
    assert got.keys() == want.keys() and all(got[k] == pytest.approx(want[k], rel=1e-6, abs=1e-6) for k in want)
    assert "samples" in " ".join(acc.Tags()["tensors"])  # the rollouts' table, as text
    # wandb (offline): the run's own record file
    history = wandb_history(tmp_path / "run")
    got = {(h["_step"], k): v for h in history for k, v in h.items() if not k.startswith(("_", "samples"))}
    assert got.keys() == want.keys() and all(got[k] == pytest.approx(want[k], rel=1e-6) for k in want)
    assert any("samples/_type" in h for h in history)
    # trackio: its local database
    from trackio.sqlite_storage import SQLiteStorage
    logs = SQLiteStorage.get_logs("ropd", "run")
    got = {(r["step"], k): v for r in logs for k, v in r.items() if k in {w[1] for w in want}}
    assert got == pytest.approx(want)


def test_a_missing_tracker_is_one_line(tiny_world, tmp_path, capsys, monkeypatch):
    import builtins
    real = builtins.__import__

    def no_wandb(name, *a, **kw):
        if name == "wandb":
            raise ImportError("no wandb")
        return real(name, *a, **kw)
    monkeypatch.setattr(builtins, "__import__", no_wandb)
    assert ropd.main(tiny_args(tiny_world, tmp_path, "--report-to", "wandb")) == 2
    assert capsys.readouterr().err.strip() == "error: --report-to wandb needs wandb (pip install wandb)"
    assert ropd.main(tiny_args(tiny_world, tmp_path, "--report-to", "mlflow")) == 2
    assert "expected none or any of tensorboard, wandb, trackio" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# --data hf:
# ----------------------------------------------------------------------------------------------

ROWS = [{"q": {"text": "1+2"}, "meta": {"gt": "3"}}, {"q": {"text": "(9-1)*2"}, "meta": {"gt": "16"}},
        {"q": {"text": "((3*4)-5)+6"}, "meta": {"gt": "13"}}]


def test_hf_datasets_from_a_folder_a_parquet_file_and_chat_messages(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "saved"))
    rows = data.load_data(f"hf:{tmp_path / 'saved'}", 0, prompt_field="q.text", answer_field="meta.gt")
    assert [(r["prompt"], r["answer"]) for r in rows] == [("1+2", "3"), ("(9-1)*2", "16"), ("((3*4)-5)+6", "13")]
    # DAPO-Math's shape: chat messages as the prompt, the answer nested
    dapo = [{"prompt": [{"role": "user", "content": "2+2"}], "reward_model": {"ground_truth": "4"}}]
    datasets.Dataset.from_list(dapo).to_parquet(str(tmp_path / "d.parquet"))
    rows = data.load_data(f"hf:{tmp_path / 'd.parquet'}", 0, answer_field="reward_model.ground_truth")
    assert rows[0]["prompt"] == [{"role": "user", "content": "2+2"}] and rows[0]["answer"] == "4"
    with pytest.raises(data.UserError, match="no prompt"):
        data.load_data(f"hf:{tmp_path / 'saved'}", 0, prompt_field="q.missing")
    with pytest.raises(data.UserError, match=r"hf:.*nope"):
        data.load_data(f"hf:{tmp_path / 'saved'}::nope", 0, prompt_field="q.text")


def test_a_run_trains_on_an_hf_dataset(tiny_world, tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "saved"))
    assert ropd.main(tiny_args(tiny_world, tmp_path, "--data", f"hf:{tmp_path / 'saved'}", "--prompt-field", "q.text",
                               "--answer-field", "meta.gt", "--steps", "1", method="grpo")) == 0
    prompts = {json.loads(x)["prompt"] for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()}
    assert prompts == {r["q"]["text"] for r in ROWS}


# ----------------------------------------------------------------------------------------------
# --lora-rank
# ----------------------------------------------------------------------------------------------

def lora_args(world, tmp_path, *extra, out="run"):
    return tiny_args(world, tmp_path, "--lora-rank", "4", "--lora-alpha", "8", "--lr", "1e-2", *extra,
                     method="lopd", out=out)


def test_lora_trains_the_adapters_only_and_merges_at_the_end(tiny_world, tmp_path):
    pytest.importorskip("peft")
    assert ropd.main(lora_args(tiny_world, tmp_path)) == 0
    ckpt = tmp_path / "run" / "checkpoint-000002"
    adapter = load_file(str(ckpt / "adapter" / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k for k in adapter)  # the adapters alone were saved
    assert any(v.abs().max() > 0 for k, v in adapter.items() if "lora_B" in k)  # B starts at 0: they moved
    base, merged = weights(tiny_world.student_path), weights(ckpt)  # the merged model loads as any checkpoint
    scale = 8 / 4
    targets = 0
    for name, w in merged.items():
        a = next((v for k, v in adapter.items() if k.endswith(name.replace(".weight", ".lora_A.weight"))), None)
        if a is None:  # not adapted: bit for bit the initial student's
            assert torch.equal(w, base[name]), name
            continue
        b = next(v for k, v in adapter.items() if k.endswith(name.replace(".weight", ".lora_B.weight")))
        assert torch.allclose(w, base[name] + scale * b @ a, atol=1e-6), name  # base + (alpha / r) B A
        targets += 1
    assert targets >= 6
    # an intermediate checkpoint holds no merged model, and resumes exactly
    assert not (tmp_path / "run" / "checkpoint-000001" / "model.safetensors").exists()
    assert ropd.main(lora_args(tiny_world, tmp_path, "--steps", "1", out="half")) == 0
    assert ropd.main(lora_args(tiny_world, tmp_path, "--steps", "2", "--resume", str(tmp_path / "half"), out="half")) == 0
    resumed = load_file(str(tmp_path / "half" / "checkpoint-000002" / "adapter" / "adapter_model.safetensors"))
    assert all(torch.allclose(resumed[k], adapter[k], atol=1e-6) for k in adapter)


def test_lora_reference_is_the_base_model_with_adapters_off(tiny_world, tmp_path):
    peft = pytest.importorskip("peft")
    tok = AutoTokenizer.from_pretrained(tiny_world.student_path)
    base = AutoModelForCausalLM.from_pretrained(tiny_world.student_path)
    model = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_world.student_path),
                                peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # adapters that moved
    sampling = grpo.SamplingConfig(group_size=2, max_new_tokens=8, temperature=0.7)
    ro = ropd.sample_rollouts(model, tok, ["1+2", "(9-1)*2"], sampling=sampling, seed=0, step=0,
                              template_kwargs={}, ref_model=model)
    T = ro.completion_ids.shape[1]
    with torch.no_grad():
        want_ref = grpo.naive_token_logprobs(base, ro.input_ids, ro.attention_mask, T, 0.7) * ro.completion_mask
        want_old = grpo.naive_token_logprobs(model, ro.input_ids, ro.attention_mask, T, 0.7) * ro.completion_mask
    assert torch.allclose(ro.ref_logp, want_ref, atol=1e-5) and torch.allclose(ro.old_logp, want_old, atol=1e-5)
    assert not torch.allclose(want_ref, want_old, atol=1e-3)  # the adapters do change the policy
