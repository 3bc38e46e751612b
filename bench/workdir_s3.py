"""Work folder on local disk vs on a loopback S3 server (moto, its own process): one 8192² scene, classical
model, end-to-end Mpx/s of each and their ratio, side by side in one run. Input and outputs stay local; only
the work folder (zarr store, tile parts, window labels) moves. Usage: python bench/workdir_s3.py OUT.json"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from pipeline.config import SegmentConfig
    from pipeline.runner import segment_scene
    from pipeline.stages.dispatch import dask_client
    from pipeline.synthetic import write_scene
    from tests.servers import S3_ENV, fresh_s3fs, make_bucket, moto_s3

    size = int(os.environ.get("SIZE", "8192"))
    tmp = Path(tempfile.mkdtemp(prefix="seamline-bench-s3-"))
    scene = tmp / "scene.tif"
    write_scene(scene, size, size, seed=5)
    with moto_s3(tmp) as endpoint:
        os.environ.update(S3_ENV, AWS_ENDPOINT_URL=endpoint)
        fresh_s3fs()
        bucket = make_bucket(endpoint)
        base = dict(model="classical", tile=1024, halo=64, label_image=False, report=False, qupath_geojson=False)
        runs = {}
        with dask_client(workers=2) as c:
            for name, workdir in (("local", str(tmp / "work")), ("s3", f"s3://{bucket}/work")):
                cfg = SegmentConfig(**base, workdir=workdir)
                t = time.perf_counter()
                s = segment_scene(str(scene), tmp / f"out-{name}", cfg, client=c)
                runs[name] = {"seconds": round(time.perf_counter() - t, 2), "megapixels_per_s": s["megapixels_per_s"],
                              "objects": s["objects"], "timings_s": s["timings_s"]}
    res = {"size": size, "model": "classical", "tile": 1024, "workers": 2, "runs": runs,
           "ratio_s3_over_local": round(runs["s3"]["megapixels_per_s"] / runs["local"]["megapixels_per_s"], 3),
           "machine": "2-core shared VM, 24 GB, no GPU; moto server on 127.0.0.1 (shared with other work)"}
    Path(sys.argv[1]).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
