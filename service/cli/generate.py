"""``bestofk generate``: one request, every candidate in a table with its verdicts."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer

from bestofk.service.cli.client import (
    SERVER_DEFAULT,
    ApiKeyOption,
    ModelOption,
    Target,
    UrlOption,
    client,
    sampling_sent,
)
from bestofk.service.cli.common import console


def parse_verifier(text: str) -> dict[str, Any]:
    """A verifier spec from JSON, or the shorthand ``type`` / ``type:key=value;key=value``.

    Shorthand values stay strings; the spec's own model converts them ("2" to 2, "true")."""
    if text.lstrip().startswith("{"):
        spec = json.loads(text)
        if not isinstance(spec, dict):
            raise typer.BadParameter("a JSON verifier spec must be an object")
        return spec
    type_name, _, rest = text.partition(":")
    spec = {"type": type_name}
    for part in filter(None, rest.split(";")):
        key, sep, value = part.partition("=")
        if not sep:
            raise typer.BadParameter(f"expected key=value in {part!r}")
        spec[key] = value
    return spec


def generate(
    prompt: Annotated[str, typer.Argument(metavar="PROMPT", help="The prompt.")],
    k: Annotated[
        int | None,
        typer.Option(metavar="K", help="Candidates to sample (default: the server's default_k)."),
    ] = None,
    verifier: Annotated[
        list[str] | None,
        typer.Option(
            metavar="SPEC",
            help='Spec as JSON or shorthand, e.g. "exact:reference=120" (repeatable).',
        ),
    ] = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    model: ModelOption = None,
    temperature: Annotated[float | None, typer.Option(metavar="T", help=SERVER_DEFAULT)] = None,
    max_tokens: Annotated[int | None, typer.Option(metavar="N", help=SERVER_DEFAULT)] = None,
    seed: Annotated[
        int | None,
        typer.Option(metavar="N", help="Sampling seed, for the same candidates again."),
    ] = None,
) -> None:
    """One request; prints every candidate with its verdicts and marks the winner."""
    body: dict[str, Any] = {
        "prompt": prompt,
        "verifiers": [parse_verifier(v) for v in verifier or []],
        "sampling": sampling_sent(temperature=temperature, max_tokens=max_tokens, seed=seed),
    }
    if k is not None:
        body["k"] = k
    response = asyncio.run(_generate_once(body, Target(url, model, api_key)))
    _print(response)


async def _generate_once(body: dict[str, Any], target: Target) -> Any:
    async with client(target) as http:
        reply = await http.post("/generate", json=body, timeout=600)
    reply.raise_for_status()
    return reply.json()


def _print(response: dict[str, Any]) -> None:
    """The candidates as a table. Texts are the model's, so they are shown as text, never read
    as rich markup (``[/INST]`` would end the print with a MarkupError)."""
    from rich.table import Table
    from rich.text import Text

    candidates = response.get("candidates") or []
    # Without a verifier nothing passes or fails: the columns would only say "no".
    judged = any(c["verdicts"] for c in candidates)
    table = Table(title=f"{response['stats']['k']} candidates", show_lines=True)
    columns = ("score", "passed", "verdicts", "tokens") if judged else ("mean logprob",)
    for column in ("#", "text", *columns):
        table.add_column(column)
    for c in candidates:
        winner = c["index"] == response["index"]
        cells: list[str | Text] = [
            ("★ " if winner else "") + str(c["index"]),
            Text(c["text"][:200]),
        ]
        if judged:
            verdicts = "\n".join(
                f"{v['verifier']}: {v['score']:.2f} {v['error'] or v['detail']}"[:80]
                for v in c["verdicts"]
            )
            cells += [
                f"{c['score']:.3f}",
                "yes" if c["passed"] else "no",
                Text(verdicts),
                str(c["tokens"]),
            ]
        else:
            logprob = c["mean_logprob"]
            cells.append("-" if logprob is None else f"{logprob:.3f}")
        table.add_row(*cells, style="bold green" if winner else None)
    console.print(table)
    t = response["timing"]
    timing = (
        f"total {t['total_ms']:.0f} ms (generate {t['generate_ms']:.0f}, "
        f"verify {t['verify_ms']:.0f})"
    )
    if judged:
        console.print(
            f"winner #{response['index']} score {response['score']:.3f} "
            f"passed={response['passed']}  {timing}"
        )
    else:
        console.print(
            f"winner #{response['index']}: no verifier, so the likeliest candidate (highest "
            f"mean token logprob; add --verifier to check answers)  {timing}"
        )
    console.print(Text(response["text"], style="bold"))
