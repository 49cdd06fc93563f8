"""The verbs that use a model: generate for a dataset (predict), talk to it (chat), or serve
it over the OpenAI API (serve). Each loads a base model, an adapter, or a run folder."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from forge.cli.common import (
    HomeOpt,
    ModelFlags,
    SamplingFlags,
    _byte_size,
    _fail,
    _home,
    _progress,
    _threads,
    add,
    console,
    err,
)

PANEL = "Use"


def register(app: typer.Typer) -> None:
    for verb in (predict, chat, serve):
        add(app, PANEL, verb)


def predict(
    target: Annotated[
        str, typer.Argument(help="JSONL/JSON/Parquet file, filter folder, built source or mixture.")
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Output JSONL (rerunning resumes: done ids are skipped).")
    ],
    which: ModelFlags = ModelFlags(),
    batch_size: Annotated[int, typer.Option(min=1, help="Prompts generated together.")] = 16,
    sampling: SamplingFlags = SamplingFlags(max_new_tokens=128),
    home: HomeOpt = None,
):
    """Generate for every record of a file, source, mixture or filter folder (greedy by default)."""
    _threads("predict")
    from forge.train.predict import predict as run_predict

    loaded = which.load()
    with _progress() as prog:
        task = prog.add_task(f"predict {target}", total=None)
        try:
            s = run_predict(
                loaded,
                target,
                out,
                _home(home),
                batch_size=batch_size,
                progress=lambda n: prog.advance(task, n),
                **sampling.kwargs(),
            )
        except ValueError as e:
            _fail(str(e))
    console.print(
        f"predicted {s.records:,} records ({s.skipped:,} already in {out}, {s.rejected:,} rejected"
        + (f" -> {out}.rejected.jsonl" if s.rejected else "")
        + f"); {s.completion_tokens:,} tokens in {s.seconds:.1f}s ({s.tokens_per_s:,.1f} tokens/s, "
        f"{s.records / max(s.seconds, 1e-9):,.2f} records/s), template {loaded.template}",
        highlight=False,
    )


def chat(
    which: ModelFlags = ModelFlags(),
    sampling: SamplingFlags = SamplingFlags(max_new_tokens=256),
):
    """Talk to a model in the terminal: streamed replies, /reset, /exit. Reads lines from
    stdin when it is not a terminal (one user turn per line)."""
    _threads("chat")
    from forge.train.infer import build_prompt, record_from_messages, stream

    loaded = which.load()
    interactive = sys.stdin.isatty()
    if interactive:
        console.print(
            f"chatting with {loaded.name} (template {loaded.template}); /reset, /exit", highlight=False
        )
    messages: list[dict] = []
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            break
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            break
        if text == "/reset":
            messages = []
            console.print("(history cleared)", highlight=False)
            continue
        messages.append({"role": "user", "content": text})
        prompt = build_prompt(loaded, record_from_messages(messages))
        if len(prompt) + sampling.max_new_tokens > loaded.context_length:
            console.print("(the conversation is longer than the model's context; /reset to start over)")
            messages.pop()
            continue
        sys.stdout.write("bot> " if interactive else "")
        reply = ""
        for piece in stream(loaded, prompt, **sampling.kwargs()):
            reply += piece
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        messages.append({"role": "assistant", "content": reply})


def serve(
    which: ModelFlags = ModelFlags(),
    host: Annotated[str, typer.Option(help="Address to bind (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option("--api-key", envvar="FORGE_API_KEY", help="Require 'Authorization: Bearer KEY'."),
    ] = None,
    max_batch: Annotated[
        int,
        typer.Option(
            min=1, help="Most greedy requests decoded together (continuous batching; 1: one at a time)."
        ),
    ] = 16,
    max_body: Annotated[
        str, typer.Option(help="Largest request body (e.g. 4MiB, 512KB); larger ones get 413 unread.")
    ] = "4MiB",  # forge.train.serve_http.MAX_BODY, what create_app takes by default
    stall_after: Annotated[
        float,
        typer.Option(
            min=1, help="Seconds a generation may go without a decode step before /health says 503."
        ),
    ] = 120.0,
    served_model_name: Annotated[
        str | None,
        typer.Option(
            help="The model id clients send and /v1/models lists (default: the model folder's name)."
        ),
    ] = None,
):
    """Serve a model over the OpenAI API (/v1/chat/completions, /v1/completions, /v1/models)
    with a chat page at /."""
    try:
        import uvicorn
    except ImportError:
        _fail("forge serve needs starlette and uvicorn: pip install 'forge-instruct[serve]'")
    _threads("serve")
    from forge.train.serve import create_app

    body_limit = _byte_size("--max-body", max_body)
    loaded = which.load()
    if served_model_name:
        loaded.name = served_model_name
    err.print(f"serving {loaded.name} (template {loaded.template}) on http://{host}:{port}/", highlight=False)
    app = create_app(loaded, api_key, max_batch, max_body=body_limit, stall_after=stall_after)
    uvicorn.run(app, host=host, port=port, log_level="warning")
