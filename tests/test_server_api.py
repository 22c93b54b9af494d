"""`ddpm serve` through the real A1111 client (`webuiapi`) and raw HTTP, against a server started on a
tiny random SD folder (tests/tiny_sd.py): seeds and infotexts, the same pixels as `StableDiffusion`,
img2img, samplers, progress and interrupt, the queue under concurrent load, and every refusal of the
safety layer (traversal, cross-origin, auth, bad input, loopback bind)."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("diffusers")
webuiapi = pytest.importorskip("webuiapi")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

from ddpm.cli import build_parser, main  # noqa: E402
from ddpm.cli.serve import bind_warning  # noqa: E402
from ddpm.io.images import to_uint8  # noqa: E402
from ddpm.pipelines import SamplingOptions  # noqa: E402
from ddpm.pipelines.stable_diffusion import StableDiffusion  # noqa: E402
from ddpm.server.app import create_app  # noqa: E402
from ddpm.server.jobs import JobQueue  # noqa: E402
from tiny_sd import SIZE, shared_tiny_sd_folder  # noqa: E402
from tiny_server import running  # noqa: E402

S = dict(width=SIZE, height=SIZE)  # 32 px: latents 16x16 on the tiny model
Q = dict(width=16, height=16, cfg_scale=1)  # quickest (no guidance batch), where pixels don't matter
USER, PASSWORD = "ann", "s3cret-pass"


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    torch.set_num_threads(1)
    return StableDiffusion.load(shared_tiny_sd_folder(tmp_path_factory), device="cpu")


@pytest.fixture(scope="module")
def served(pipe, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    app = create_app(pipe, outputs=root / "outputs")
    with running(app) as (url, server):
        yield dict(url=url, port=int(url.rsplit(":", 1)[1]), app=app, root=root, server=server,
                   jobs=app.app.state.jobs)


@pytest.fixture()
def api(served):
    return webuiapi.WebUIApi(host="127.0.0.1", port=served["port"], sampler="Euler a", steps=3)


def _raw(served, method, path, body=None, headers=None):
    """(status, headers, body bytes) of one request sent byte for byte (no URL normalisation)."""
    conn = http.client.HTTPConnection("127.0.0.1", served["port"], timeout=60)
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    conn.putrequest(method, path, skip_host="Host" in hdrs)
    for k, v in hdrs.items():
        conn.putheader(k, v)
    if data is not None:
        conn.putheader("Content-Length", str(len(data)))
    conn.endheaders(data)
    r = conn.getresponse()
    out = r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    conn.close()
    return out


def _pixels(images):
    return [np.asarray(im.convert("RGB")) for im in images]


def _photo(seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8))


# ------------------------------------------------------------------------------------- generation
def test_batch_seeds_infotexts_and_the_pipelines_pixels(api, pipe):
    r = api.txt2img(prompt="a fox", negative_prompt="fog", seed=100, batch_size=2, n_iter=2, cfg_scale=5,
                    steps=3, **S)
    assert len(r.images) == 4 and all(im.size == (SIZE, SIZE) for im in r.images)
    info = r.info
    assert info["seed"] == 100 and info["all_seeds"] == [100, 101, 102, 103]
    assert info["all_prompts"] == ["a fox"] * 4 and info["negative_prompt"] == "fog"
    assert (info["sampler_name"], info["steps"], info["cfg_scale"]) == ("Euler a", 3, 5.0)
    assert (info["width"], info["height"]) == (SIZE, SIZE)
    for i, text in enumerate(info["infotexts"]):
        assert text.startswith("a fox\nNegative prompt: fog\n")
        assert f"Steps: 3, Sampler: Euler a, CFG scale: 5, Seed: {100 + i}, Size: {SIZE}x{SIZE}" in text
    again = api.txt2img(prompt="a fox", negative_prompt="fog", seed=100, batch_size=2, n_iter=2,
                        cfg_scale=5, steps=3, **S)
    ours = _pixels(r.images)
    assert all(np.array_equal(a, b) for a, b in zip(ours, _pixels(again.images)))  # same seed, same pixels
    assert not np.array_equal(ours[0], ours[1])  # seeds differ, images differ
    direct = pipe.txt2img("a fox", negative_prompt="fog", num_images=4, batch_size=2, height=SIZE,
                          width=SIZE, options=SamplingOptions(sampler="euler_a", steps=3, guidance_scale=5,
                                                              seed=100))  # fmt: skip
    expected = to_uint8(direct.images).numpy()
    for got, want in zip(ours, expected):
        np.testing.assert_array_equal(got, want)  # the server adds nothing to the pipeline's pixels


def test_img2img_and_inpaint_match_the_pipeline(api, pipe):
    photo = _photo(1)
    r = api.img2img(images=[photo], prompt="a boat", seed=7, denoising_strength=0.5, steps=4, cfg_scale=4,
                    sampler_name="DPM++ 2M Karras", **S)
    assert r.info["seed"] == 7 and "Denoising strength: 0.5" in r.info["infotexts"][0]
    assert "Sampler: DPM++ 2M Karras" in r.info["infotexts"][0]
    o = SamplingOptions(sampler="dpmpp_2m", karras=True, steps=4, guidance_scale=4, seed=7)
    want = pipe.img2img(photo, "a boat", strength=0.5, options=o, height=SIZE, width=SIZE)
    np.testing.assert_array_equal(_pixels(r.images)[0], to_uint8(want.images)[0].numpy())
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (8, 8, 24, 24))
    r = api.img2img(images=[photo], mask_image=mask, prompt="a boat", seed=3, denoising_strength=1.0,
                    steps=3, inpainting_fill=1, **S)
    got = _pixels(r.images)[0].astype(int)
    want = pipe.inpaint(photo, mask, "a boat", strength=1.0, height=SIZE, width=SIZE,
                        options=SamplingOptions(sampler="euler_a", steps=3, guidance_scale=7, seed=3))
    np.testing.assert_array_equal(got, to_uint8(want.images)[0].numpy())


def test_samplers_list_has_a1111_names_and_each_runs(api, served):
    listed = api.get_samplers()
    names = [s["name"] for s in listed]
    assert {"Euler a", "Euler", "DPM++ 2M", "DPM++ 2M Karras", "DDIM", "PLMS", "Heun", "DPM++ 3M",
            "DPM++ 2M SDE Karras", "UniPC", "LMS"} <= set(names)
    assert all(set(s) == {"name", "aliases", "options"} for s in listed)
    for name in names:
        r = api.txt2img(prompt="x", seed=1, steps=2, sampler_name=name, **Q)
        assert r.info["sampler_name"] == name and len(r.images) == 1
    name = served["jobs"].engine.name
    assert api.get_sd_models()[0]["model_name"] == name
    options = api.get_options()
    assert options["sd_model_checkpoint"].startswith(name)
    api.set_options({"sd_model_checkpoint": options["sd_model_checkpoint"]})
    status, _, body = _raw(served, "POST", "/sdapi/v1/options", {"sd_model_checkpoint": "/etc/other.ckpt"})
    assert status == 422 and b"command line" in body  # no model loads from a request


def test_progress_moves_during_a_job_and_interrupt_stops_only_it(api, served):
    out = {}
    worker = threading.Thread(target=lambda: out.update(r=api.txt2img(prompt="slow", seed=9, steps=40,
                                                                       n_iter=3, **S)))
    worker.start()
    seen = []
    deadline = time.time() + 30
    while time.time() < deadline:
        p = api.get_progress()
        if p["state"]["sampling_step"] > 0:
            seen.append(p)
        if len(seen) >= 2:
            break
        time.sleep(0.02)
    assert seen, "no progress was reported while the job ran"
    for p in seen:
        assert 0.0 < p["progress"] < 1.0
        assert p["state"]["sampling_steps"] == 40 and p["state"]["job_count"] == 3
        assert p["current_image"] is not None  # a preview of x0_hat
        Image.open(io.BytesIO(base64.b64decode(p["current_image"]))).load()
    assert seen[-1]["progress"] >= seen[0]["progress"]
    assert api.interrupt()["interrupted"] == seen[0]["state"]["job"]
    worker.join(30)
    r = out["r"]
    assert r.info["interrupted"] is True and len(r.images) < 3
    assert api.get_progress()["progress"] == 0.0  # nothing running
    assert len(api.txt2img(prompt="after", seed=1, steps=2, **S).images) == 1  # still serving


def test_eight_concurrent_clients_all_complete_in_order(served):
    def one(seed):
        client = webuiapi.WebUIApi(host="127.0.0.1", port=served["port"], sampler="Euler a", steps=2)
        return client.txt2img(prompt=f"p{seed}", seed=seed, **Q)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(1000, 1008)))
    assert [r.info["seed"] for r in results] == list(range(1000, 1008))
    assert [r.info["prompt"] for r in results] == [f"p{s}" for s in range(1000, 1008)]
    assert all(len(r.images) == 1 for r in results)
    # our own job API: 8 submitted at once run first-in first-out, each with its own seed
    ids = [json.loads(_raw(served, "POST", "/api/jobs", dict(prompt="q", seed=s, steps=2, **Q))[2])["id"]
           for s in range(8)]
    jobs = served["jobs"]
    for job_id in ids:
        assert jobs.get(job_id).done.wait(60)
    done = [jobs.get(i) for i in ids]
    assert all(j.state == "done" for j in done)
    assert [j.images[0]["seed"] for j in done] == list(range(8))
    starts = [j.started for j in done]
    assert starts == sorted(starts)


def test_cancel_hits_only_the_job_named(served):
    body = dict(prompt="c", steps=8, seed=5, **Q)
    a, b, c = (json.loads(_raw(served, "POST", "/api/jobs", body)[2])["id"] for _ in range(3))
    status, _, answer = _raw(served, "DELETE", f"/api/jobs/{b}")
    assert status == 200 and json.loads(answer)["state"] == "cancelled"
    jobs = served["jobs"]
    assert jobs.get(a).done.wait(60) and jobs.get(c).done.wait(60)
    assert (jobs.get(a).state, jobs.get(b).state, jobs.get(c).state) == ("done", "cancelled", "done")
    assert _raw(served, "GET", "/api/jobs/0123456789abcdef")[0] == 404


def test_server_sent_events_end_at_progress_1(served):
    job_id = json.loads(_raw(served, "POST", "/api/jobs", dict(prompt="e", steps=4, seed=2, **S))[2])["id"]
    status, headers, body = _raw(served, "GET", f"/api/jobs/{job_id}/events")
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in body.decode().splitlines() if line.startswith("data: ")]
    assert events[-1]["state"] == "done" and events[-1]["progress"] == 1.0
    assert all(0.0 <= e["progress"] <= 1.0 for e in events)
    image = events[-1]["images"][0]
    status, headers, png = _raw(served, "GET", image["url"])
    assert status == 200 and headers["content-type"] == "image/png"
    meta = Image.open(io.BytesIO(png)).text
    assert "Seed: 2" in meta["parameters"] and json.loads(meta["ddpm"])["seed"] == 2


def test_a_failing_job_fails_alone(served, api, monkeypatch):
    engine = served["jobs"].engine
    real = engine.generate

    def flaky(req, *a, **k):
        if req.prompt == "boom":
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(req, *a, **k)

    monkeypatch.setattr(engine, "generate", flaky)
    status, _, body = _raw(served, "POST", "/sdapi/v1/txt2img", dict(prompt="boom", steps=2, **S))
    assert status == 507 and b"out of memory" in body
    assert len(api.txt2img(prompt="fine", seed=1, steps=2, **S).images) == 1


# ---------------------------------------------------------------------------------------- refusals
TRAVERSALS = [
    "/api/outputs/../../../../etc/passwd", "/api/outputs/..%2f..%2f..%2fetc%2fpasswd",
    "/api/outputs/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/api/outputs/%2e%2e/%2e%2e/etc/passwd",
    "/api/outputs/..%5c..%5cetc%5cpasswd", "/api/outputs/..\\..\\etc\\passwd", "/api/outputs/%2fetc%2fpasswd",
    "/api/outputs//etc/passwd", "/api/outputs/%5c%5cserver%5cshare%5cx.png",
    "/api/outputs/C:%5cwindows%5cwin.ini",
    "/api/outputs/x%00.png", "/api/outputs/%00", "/file=../../etc/passwd", "/file=/etc/passwd",
    "/static/../__init__.py", "/static/..%2f__init__.py", "/static/%2e%2e%2fapp.py", "/static/app.js%00.py",
    "/api/outputs/" + "0" * 32 + ".png",
]  # fmt: skip


def test_file_routes_refuse_every_traversal_and_symlinks(served, api, tmp_path):
    for path in TRAVERSALS:
        status, _, body = _raw(served, "GET", path)
        assert status in (400, 404, 405), (path, status)
        assert b"root:" not in body and b"import" not in body, path
    r = api.txt2img(prompt="s", seed=4, steps=2, **S)
    assert len(r.images) == 1
    record = served["jobs"].outputs.records()[0]
    path = served["jobs"].outputs.folder / f"{record['id']}.png"
    assert _raw(served, "GET", record["url"])[0] == 200
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0")
    path.unlink()
    os.symlink(secret, path)  # an output swapped for a link out of the folder
    status, _, body = _raw(served, "GET", record["url"])
    assert status == 404 and b"root:" not in body
    # nothing was written outside the outputs folder
    outside = [p for p in served["root"].rglob("*") if served["jobs"].outputs.folder not in p.parents
               and p != served["jobs"].outputs.folder]  # fmt: skip
    assert outside == []


def test_cross_origin_requests_cannot_queue_work(served):
    jobs = served["jobs"]
    before = len(jobs._jobs)
    body = dict(prompt="x", steps=2, **S)
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                    {"Sec-Fetch-Site": "cross-site"}, {"Origin": "http://127.0.0.1:1"}):  # fmt: skip
        for path in ("/sdapi/v1/txt2img", "/api/jobs", "/sdapi/v1/interrupt", "/sdapi/v1/options"):
            status, hdrs, _ = _raw(served, "POST", path, body, headers)
            assert status == 403, (path, headers)
            assert "access-control-allow-origin" not in hdrs
    assert len(jobs._jobs) == before  # nothing was queued
    own = f"http://127.0.0.1:{served['port']}"
    same = {"Origin": own, "Sec-Fetch-Site": "same-origin"}
    status, hdrs, _ = _raw(served, "POST", "/api/jobs", body, same)
    assert status == 202 and "access-control-allow-origin" not in hdrs
    status, hdrs, _ = _raw(served, "GET", "/sdapi/v1/progress", headers={"Origin": "http://evil.example"})
    assert status == 200 and "access-control-allow-origin" not in hdrs  # readable by no foreign page
    status, _, _ = _raw(served, "GET", "/", headers={"Host": "evil.example"})  # DNS rebinding
    assert status == 421


BAD = [
    ("/sdapi/v1/txt2img", dict(prompt="x", sampler_name="Nonexistent"), "sampler"),
    ("/sdapi/v1/txt2img", dict(prompt="x", width=100000), "width"),
    ("/sdapi/v1/txt2img", dict(prompt="x", steps=-3), "steps"),
    ("/sdapi/v1/txt2img", dict(prompt="x", steps="ten"), "steps"),
    ("/sdapi/v1/txt2img", dict(prompt="x", steps=100000), "steps"),
    ("/sdapi/v1/txt2img", dict(prompt="x", batch_size=1000), "batch_size"),
    ("/sdapi/v1/txt2img", dict(prompt="x", width=2048, height=2048), "pixels"),
    ("/sdapi/v1/txt2img", dict(prompt="x", width=30, height=32), "multiple"),
    ("/sdapi/v1/txt2img", dict(prompt="x", seed="abc"), "seed"),
    ("/sdapi/v1/txt2img", dict(prompt=5), "prompt"),
    ("/sdapi/v1/txt2img", dict(prompt="x" * 20000), "limit"),
    ("/sdapi/v1/txt2img", dict(prompt="x", cfg_scale="NaN"), "cfg_scale"),
    ("/sdapi/v1/txt2img", dict(prompt="x", scheduler="wobbly"), "scheduler"),
    ("/sdapi/v1/txt2img", [1, 2], "object"),
    ("/sdapi/v1/img2img", dict(prompt="x", init_images=["not base64 !!"]), "base64"),
    ("/sdapi/v1/img2img", dict(prompt="x", init_images=[base64.b64encode(b"GIF89a...").decode()]), "image"),
    ("/sdapi/v1/img2img", dict(prompt="x"), "init_images"),
    ("/sdapi/v1/img2img", dict(prompt="x", init_images=["data:text/plain,hello"]), "base64"),
    ("/api/jobs", dict(mode="upscale"), "mode"),
    ("/api/jobs", dict(mode="inpaint", init_images=["x"]), "base64"),
]


@pytest.mark.parametrize("path, body, word", BAD, ids=[w for _, _, w in BAD])
def test_bad_input_is_a_4xx_that_names_the_problem(served, path, body, word):
    status, _, answer = _raw(served, "POST", path, body)
    assert 400 <= status < 500, (status, answer[:200])
    assert word.lower() in json.loads(answer)["detail"].lower()


def test_bodies_past_the_limit_and_non_json_are_refused(served):
    status, _, answer = _raw(served, "POST", "/sdapi/v1/txt2img", b"{not json")
    assert status == 400 and b"JSON" in answer
    status, _, answer = _raw(served, "POST", "/sdapi/v1/img2img", b"x" * (33 * 1024 * 1024))
    assert status == 413 and b"limit" in answer


def test_auth_guards_every_route_and_never_echoes(pipe, tmp_path):
    app = create_app(pipe, outputs=tmp_path / "out", credentials=[(USER, PASSWORD), ("bob", "hunter22")])
    with running(app) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        served = dict(port=port)
        for path in ("/", "/static/app.js", "/sdapi/v1/samplers", "/sdapi/v1/progress", "/openapi.json",
                     "/api/outputs", "/api/outputs/" + "0" * 32 + ".png", "/nope"):
            status, headers, _ = _raw(served, "GET", path)
            assert status == 401 and headers["www-authenticate"].startswith("Basic"), path
        wrong = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}x".encode()).decode()
        assert _raw(served, "GET", "/", headers={"Authorization": wrong})[0] == 401
        assert _raw(served, "GET", "/", headers={"Authorization": "Basic !!!"})[0] == 401
        status, _, _ = _raw(served, "POST", "/sdapi/v1/txt2img", dict(prompt="x", steps=2, **S))
        assert status == 401
        client = webuiapi.WebUIApi(host="127.0.0.1", port=port, username="bob", password="hunter22", steps=2)
        r = client.txt2img(prompt="authorised", seed=3, **S)
        assert len(r.images) == 1
        for path in ("/sdapi/v1/options", "/api/info", "/sdapi/v1/cmd-flags"):
            good = "Basic " + base64.b64encode(b"bob:hunter22").decode()
            _, _, body = _raw(served, "GET", path, headers={"Authorization": good})
            assert b"hunter22" not in body and PASSWORD.encode() not in body


def test_loopback_bind_by_default_and_a_warning_for_open_binds(served, capsys):
    args = build_parser().parse_args(["serve", "--model", "m"])
    assert (args.host, args.port) == ("127.0.0.1", 7860)
    assert served["server"].servers[0].sockets[0].getsockname()[0] == "127.0.0.1"
    assert bind_warning("127.0.0.1", []) is None and bind_warning("0.0.0.0", [(USER, PASSWORD)]) is None
    assert "--api-auth" in bind_warning("0.0.0.0", [])
    assert main(["serve", "--model", "/no/such/model"]) == 2
    assert "no such" in capsys.readouterr().err
    assert main(["serve", "--model", "m", "--api-auth", "justaname"]) == 2
    err = capsys.readouterr().err
    assert "user:password" in err and "justaname" not in err  # the credential text is never echoed


def test_close_cancels_the_running_and_queued_jobs(pipe, tmp_path):
    from ddpm.server.a1111 import Limits, parse_request
    from ddpm.server.engine import Engine
    from ddpm.server.outputs import Outputs

    jobs = JobQueue(Engine(pipe), Outputs(tmp_path / "o"), Limits())
    running_job = jobs.submit(parse_request(dict(prompt="a", steps=150, **S), "txt2img", Limits()))
    queued = jobs.submit(parse_request(dict(prompt="b", steps=2, **S), "txt2img", Limits()))
    deadline = time.time() + 30
    while running_job.step == 0 and time.time() < deadline:
        time.sleep(0.01)
    jobs.close()
    assert running_job.state == "cancelled" and running_job.step < 150
    assert queued.state == "cancelled" and not jobs._worker.is_alive()
    assert not list(Path(tmp_path / "o").iterdir())


@pytest.mark.slow  # starts a process (~10 s); test_close_cancels_the_running_and_queued_jobs: the queue
def test_sigterm_cancels_the_running_job_and_exits_cleanly(tmp_path_factory, tmp_path):
    import signal
    import subprocess
    import sys

    from tiny_server import free_port

    port, out = free_port(), tmp_path / "outputs"
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ddpm.cli", "serve", "--model",
                             str(shared_tiny_sd_folder(tmp_path_factory)), "--port", str(port), "--outputs",
                             str(out)], env=env, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        served = dict(port=port)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if _raw(served, "GET", "/sdapi/v1/progress")[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        answers = {}
        body = dict(prompt="long", steps=150, n_iter=4, **Q)
        post = lambda: answers.update(r=_raw(served, "POST", "/sdapi/v1/txt2img", body))  # noqa: E731
        worker = threading.Thread(target=post)
        worker.start()
        progress = lambda: json.loads(_raw(served, "GET", "/sdapi/v1/progress")[2])["progress"]  # noqa: E731
        while time.time() < deadline and progress() == 0:
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a clean stop
        worker.join(10)
        status, _, answer = answers["r"]
        assert status == 200 and json.loads(json.loads(answer)["info"])["interrupted"] is True
        assert "stopping: the queue and the running job are cancelled" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_pixel_model_serves_txt2img_at_its_own_size(tmp_path):
    from ddpm.pipelines import PixelPipeline
    from test_pipeline_pixel import _model_file

    pixel = PixelPipeline.load(_model_file(tmp_path), device="cpu")
    app = create_app(pixel, outputs=tmp_path / "out", name="digits")
    with running(app) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        client = webuiapi.WebUIApi(host="127.0.0.1", port=port, sampler="Euler a", steps=3)
        r = client.txt2img(prompt="", seed=3, batch_size=2, cfg_scale=7)  # guidance is off for this model
        assert [im.size for im in r.images] == [(8, 8)] * 2 and r.info["all_seeds"] == [3, 4]
        o = SamplingOptions(sampler="euler_a", steps=3, seed=3)
        images, _ = pixel.generate(2, options=o, batch_size=2)
        want = to_uint8(images.expand(-1, 3, -1, -1)).numpy()
        for got, w in zip(_pixels(r.images), want):
            np.testing.assert_array_equal(got, w)
        status, _, body = _raw(dict(port=port), "POST", "/sdapi/v1/img2img",
                               dict(init_images=[webuiapi.raw_b64_img(r.images[0])]))  # fmt: skip
        assert status == 422 and b"txt2img" in body
