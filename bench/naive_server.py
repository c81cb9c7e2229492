"""The baseline, shaped like the service's first version: everything on the event loop.

An ``async def`` route reads the upload, decodes it with PIL and runs the model, one image per
forward pass, without leaving the event loop. Same checkpoint and ``build_preprocess`` as the
service. Run it with uvicorn; the benchmark sets these environment variables:

    BENCH_CHECKPOINT  checkpoint path            BENCH_API_KEY  the X-API-Key to accept
    BENCH_THREADS     torch.set_num_threads      BENCH_DEVICE   cpu, cuda or auto (default cpu)

    BENCH_CHECKPOINT=model.pt BENCH_API_KEY=k BENCH_THREADS=2 \
        python -m uvicorn bench.naive_server:app --host 127.0.0.1 --port 8001
"""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import numpy as np
import torch
from fastapi import FastAPI, File, Header, HTTPException, Request, UploadFile
from PIL import Image

from src.core.device import resolve_device
from src.models import build_preprocess
from src.models.backends import torch as torch_backend


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1)))
    device = torch.device(resolve_device(os.environ.get("BENCH_DEVICE", "cpu")))
    classifier = torch_backend.load(os.environ["BENCH_CHECKPOINT"], device)
    size = classifier.metadata.input_size
    classifier.predict_proba(torch.zeros(1, 3, size, size))
    app.state.classifier = classifier
    app.state.preprocess = build_preprocess(classifier.metadata)
    app.state.api_key = os.environ.get("BENCH_API_KEY", "demo-key")
    yield


app = FastAPI(title="naive baseline", lifespan=lifespan)


@app.get("/ready")
async def ready() -> dict[str, str]:
    return {"status": "ready"}


@app.post("/infer")
async def infer(
    request: Request,
    file: Annotated[UploadFile, File()],
    x_api_key: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    if x_api_key != request.app.state.api_key:
        raise HTTPException(status_code=401, detail="invalid API key")
    data = await file.read()
    try:
        rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    except Exception as exc:
        raise HTTPException(status_code=400, detail="not an image") from exc
    classifier = request.app.state.classifier
    tensor = request.app.state.preprocess(rgb).unsqueeze(0)
    fake_prob = classifier.fake_probabilities(tensor)[0]
    return {"fake_prob": round(fake_prob, 6), "real_prob": round(1 - fake_prob, 6)}
