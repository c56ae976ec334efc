"""The main command (pipelines.cli.repro): its protocol choice, against a real HTTP server on 127.0.0.1,
the `dvc repro` calls it makes for one part of the lab, and its exit status on bad input."""
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from pipelines.cli import repro as main
from pipelines.data import sources
from pipelines.errors import ParamsError
import isolation

REPO = Path(__file__).resolve().parents[1]


def _lab_files(params):
    lab = params.model_copy(update={"protocol": "lab"})
    return [(name, key, rel) for name in params.datasets for key, rel in sources.files_for(name, lab)]


def _serve_all(server, params):
    for _, _, rel in _lab_files(params):
        server.add(f"m/{Path(rel).name}", ("ok", b"x"))
    return server.base("m")


def test_lab_when_every_source_answers(http_server, make_params, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    base = None
    params = make_params()
    base = _serve_all(http_server, params)
    urls = {k: [base] for k in ("mnist_urls", "cifar10_urls", "hymenoptera_urls", "torchvision_weights_urls")}
    protocol, reason = main.choose_protocol(make_params({"sources": urls}))
    assert protocol == "lab", reason


def test_offline_names_the_file_that_cannot_be_had(http_server, make_params, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    params = make_params()
    base = _serve_all(http_server, params)
    http_server.add("m/cifar-10-python.tar.gz", ("status", 404))
    urls = {k: [base] for k in ("mnist_urls", "cifar10_urls", "hymenoptera_urls", "torchvision_weights_urls")}
    protocol, reason = main.choose_protocol(make_params({"sources": urls}))
    assert protocol == "offline"
    assert "cifar-10-python.tar.gz" in reason and "404" in reason


def test_offline_data_already_downloaded_does_not_count_as_lab(http_server, make_params, monkeypatch, tmp_path):
    # data/raw/mnist holds Fashion-MNIST under MNIST's file names after an offline run.
    monkeypatch.chdir(tmp_path)
    raw = tmp_path / "data/raw/mnist"
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte.gz").write_bytes(b"x")
    (raw / "SOURCE.json").write_text('{"source": "fashion_mnist"}')
    urls = {k: [http_server.base("none")] for k in
            ("mnist_urls", "cifar10_urls", "hymenoptera_urls", "torchvision_weights_urls")}
    protocol, reason = main.choose_protocol(make_params({"sources": urls}))
    assert protocol == "offline" and "train-images-idx3-ubyte.gz" in reason


def test_set_protocol_keeps_comments(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("seed: 1\nprotocol: offline   # comment\n# more\n")
    assert main.set_protocol(p, "lab")
    assert p.read_text() == "seed: 1\nprotocol: lab   # comment\n# more\n"
    assert not main.set_protocol(p, "lab")


def test_data_option_writes_the_folder_into_params(tmp_path, params_raw):
    from pipelines import config

    params_file = tmp_path / "params.yaml"
    # The committed params as YAML, with comments of its own to keep (the committed file may have none).
    text = yaml.safe_dump(params_raw, sort_keys=False)
    assert "\n  transfer:\n" in text
    params_file.write_text("# my params\n" + text.replace("\n  transfer:\n", "\n  transfer:   # my photos\n"))
    photos = tmp_path / "meine Fotos"
    photos.mkdir()
    before = params_file.read_text()
    assert main.set_folder(params_file, "transfer", str(photos)) == str(photos.resolve())
    p = config.load(params_file)
    assert p.datasets["transfer"].own_folder == str(photos.resolve()) and p.datasets["mnist"].own_folder is None
    assert p.datasets["transfer"].source("offline") == p.datasets["transfer"].source("lab") == "image_folder"
    assert "# my params\n" in params_file.read_text() and "  transfer:   # my photos\n" in params_file.read_text()
    main.set_folder(params_file, "transfer", "builtin")
    assert params_file.read_text() == before
    with pytest.raises(ParamsError, match="is not a folder"):
        main.set_folder(params_file, "mnist", str(tmp_path / "nope"))
    with pytest.raises(ParamsError, match="'digits'"):
        main.set_folder(params_file, "digits", str(photos))
    assert params_file.read_text() == before


def test_a_params_file_without_a_protocol_line_is_one_line_exit_2(tmp_path, params_raw, monkeypatch, capsys):
    # The key is quoted, so YAML reads it but there is no `protocol:` line to rewrite: bad input,
    # reported before `dvc repro` runs and without changing the file.
    text = re.sub(r"(?m)^protocol:", '"protocol":', yaml.safe_dump(params_raw, sort_keys=False))
    (tmp_path / "params.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    assert main.main(["--protocol", "offline"]) == 2
    out = capsys.readouterr()
    assert out.err == "error: params.yaml: no top-level 'protocol:' line to set\n" and "protocol:" not in out.out
    assert (tmp_path / "params.yaml").read_text() == text


def test_part_runs_its_stages_then_the_report_alone(make_params):
    params = make_params()
    calls = main.repro_commands(params, ["1.1"], ["--force"])
    assert calls[-1] == ["dvc", "repro", "--force", "-s", "report"]
    parts = params.reference.parts
    want = [f"{s}@{v}" for v in (parts.simple_cnn, parts.more_epochs, parts.cheaper) for s in ("train", "evaluate", "embed")]
    assert calls[0] == ["dvc", "repro", "--force", *want] and len(calls) == 2
    # The transfer options bring their replicates; "1.3" and "transfer" are the same part.
    (tl,) = main.repro_commands(params, ["transfer", "1.3"], [])[:-1]
    rep = params.replicates
    assert [t for t in tl[2:] if t.startswith("replicate@")] == \
        [f"replicate@{v}-{s}" for v in parts.transfer if v in rep.variants for s in rep.seeds]
    assert {t.split("@")[1] for t in tl[2:] if t.startswith("train@")} == set(parts.transfer)
    # The report alone; no part: the whole lab as before.
    assert main.repro_commands(params, ["report"], []) == [["dvc", "repro", "-s", "report"]]
    assert main.repro_commands(params, [], ["-f"]) == [["dvc", "repro", "-f"]]


def test_part_without_variants_is_one_line_exit_2(make_params):
    with pytest.raises(ParamsError, match=r"--part 1.2: reference.yaml \(`parts`\) names no variant"):
        main.repro_commands(make_params({"parts": {"alexnet": None}}), ["1.2"], [])


def test_part_calls_dvc_for_its_stages_and_stops_at_a_failure(tmp_path, params_raw, reference_raw, monkeypatch, capsys):
    # A stand-in `dvc` on PATH records each call; the first one fails, so the report is not run.
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_raw, sort_keys=False))
    (tmp_path / "reference.yaml").write_text(yaml.safe_dump(reference_raw, sort_keys=False))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.txt"
    (bin_dir / "dvc").write_text(f'#!/bin/sh\necho "$@" >> {log}\nexit $DVC_RC\n')
    (bin_dir / "dvc").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_RC", "0")
    assert main.main(["--protocol", "offline", "--part", "1.2"]) == 0
    alexnet = reference_raw["parts"]["alexnet"]

    def calls() -> list[str]:   # the `dvc repro` calls that run stages (each is planned first with --dry)
        return [c for c in log.read_text().splitlines() if not c.startswith("repro --dry")]

    assert calls() == [f"repro train@{alexnet} evaluate@{alexnet} embed@{alexnet}", "repro -s report"]
    log.unlink()
    monkeypatch.setenv("DVC_RC", "3")
    assert main.main(["--protocol", "offline", "--part", "1.2"]) == 1
    assert calls() == [f"repro train@{alexnet} evaluate@{alexnet} embed@{alexnet}"]
    with pytest.raises(SystemExit) as bad:
        main.main(["--part", "2.1"])
    assert bad.value.code == 2 and "invalid choice: '2.1'" in capsys.readouterr().err


def test_the_closing_line_names_what_the_run_built(tmp_path, monkeypatch):
    """`run -- evaluate@mnist_cnn` builds no report, so the closing line names that stage's outputs."""
    (tmp_path / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    (tmp_path / "params.yaml").write_text(isolation.committed_params_text())
    subprocess.run(["dvc", "init", "-q", "--no-scm"], cwd=tmp_path, check=True, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    monkeypatch.chdir(tmp_path)
    line = main.produced(["--", "evaluate@mnist_cnn"])
    assert line == ("evaluate@mnist_cnn (results/mnist_cnn/evaluate, metrics/mnist_cnn/evaluate.json) and the stages "
                    "it needs; no report was built (run without a stage name to build it)")
    assert "report.html" not in main.produced(["-f", "train@tl_svm"])
    for whole in ([], ["--", "report"], ["--downstream", "train@tl_svm"], ["-f"]):
        assert main.produced(whole) == "reports/report.html (and report.md)"
    assert main.produced(["--dry"]) == "nothing (a dry run)"
