"""The gateway inside an existing FastAPI app, under `/results`, started by the app's lifespan.

    uvicorn app:app            (from this folder; REDIS_URL and SECRET_KEY as for resultcast)

Browsers watch at `ws://<host>/results/ws`, load `/results/static/resultcast.js`, and the
app's own route `POST /reports` creates a job, starts the work and returns the job's token.
Here the work is an asyncio task writing through `AsyncProducer`; in a real app it is a
Celery, RQ, Dramatiq or arq task (see the other examples).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request

from service.config import Settings
from service.gateway.app import create_app
from service.producer import AsyncProducer

gateway = create_app(Settings.from_env())
running: set[asyncio.Task[None]] = set()


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[dict[str, AsyncProducer]]:
    async with gateway.lifespan(), AsyncProducer() as producer:  # the gateway's subscriber,
        yield {"producer": producer}  # hub and Redis clients; the app's producer


app = FastAPI(lifespan=lifespan)
app.mount("/results", gateway)


@app.post("/reports")
async def start_report(request: Request, steps: int = 10) -> dict[str, str]:
    producer: AsyncProducer = request.state.producer
    job, token = await producer.create(kind="report")
    task = asyncio.create_task(write_report(producer, job, steps))
    running.add(task)
    task.add_done_callback(running.discard)
    return {"job": job, "token": token}


async def write_report(producer: AsyncProducer, job: str, steps: int) -> None:
    async with producer.open(job) as j:
        for step in range(j.resumed_after + 1, steps + 1):
            await j.emit({"step": step, "of": steps})
            await asyncio.sleep(0.01)
        await j.done({"steps": steps})
