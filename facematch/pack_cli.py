"""``facematch models`` and ``facematch demo``: the model cards and the installed pack (imported only when run)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ._cliutil import CheckFailedError, JsonOpt, check_failed, emit, matcher_for, new_app
from .errors import FacematchError

models_app = new_app("Model cards and the installed model pack.")


@models_app.command("list")
def models_list(as_json: JsonOpt = False) -> None:
    """List the known model cards and whether their files are installed and intact."""
    from .model_files import list_cards

    rows = [{"id": card.id, "task": card.task, **_file_status(card)} for card in list_cards()]
    emit(
        as_json,
        rows,
        lambda: "\n".join(f"{r['id']:<20} {r['task']:<10} {r['status']:<10} {r.get('path', '')}" for r in rows),
    )


def _file_status(card: Any) -> dict[str, Any]:
    from .model_files import resolve_model_path, verify_file

    try:
        path = resolve_model_path(card)
        verify_file(card, path)
        return {"status": "ok", "path": str(path)}
    except FacematchError as exc:
        return {"status": "missing" if exc.code == "model_not_found" else "corrupt", "error": exc.message}


@models_app.command("check")
def models_check(
    model: Annotated[list[str] | None, typer.Argument(help="Card ids or paths (default: the default pack).")] = None,
    providers: Annotated[
        str | None,
        typer.Option(
            help="Load each model on these providers (comma-separated: cuda,cpu / tensorrt / torch-cuda) and "
            "fail unless they are the ones running (default: FACEMATCH_PROVIDERS, else TensorRT > CUDA > CPU, "
            "reported without failing)."
        ),
    ] = None,
    load: Annotated[bool, typer.Option(help="Load each model and print the providers it runs on.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Verify that model files exist and match their cards' sha256, and show what each model runs on.

    Exit 1 when one is missing or corrupt (or, with --providers, does not run on them).
    """
    from .cards import DEFAULT_DETECTOR, DEFAULT_EMBEDDER, DEFAULT_LANDMARKS
    from .model_files import load_card

    wanted = [p.strip() for p in providers.split(",") if p.strip()] if providers else None
    rows = []
    for ref in model or [DEFAULT_DETECTOR, DEFAULT_EMBEDDER, DEFAULT_LANDMARKS]:
        card = load_card(ref)
        row = {"id": card.id, **_file_status(card)}
        if row["status"] == "ok" and load:
            row["providers"] = _running_providers(card, wanted)
        rows.append(row)

    def text() -> str:
        lines = []
        for r in rows:
            line = f"{r['id']}: {r['status']} {r.get('path') or r.get('error')}"
            if "providers" in r:
                line += f"  providers={r['providers']}"
            lines.append(line)
        return "\n".join(lines)

    emit(as_json, rows, text)
    bad = sum(r["status"] != "ok" for r in rows)
    if bad:
        check_failed(f"{bad} of {len(rows)} model(s) missing or corrupt")


def _running_providers(card: Any, wanted: list[str] | None) -> list[str]:
    """What a model really runs on (raises ProviderUnavailableError when explicit providers did not load)."""
    from .model_files import resolve_model_path
    from .runtime import create_session, split_torch_providers

    device, ort_providers = split_torch_providers(wanted)
    if device is not None and card.task == "embedding":
        from .zoo.torch_embedder import TorchEmbedder

        return TorchEmbedder.load(card, device=device).providers
    if device is not None:  # the torch runtime embeds; other models stay on ONNX Runtime
        ort_providers = ort_providers or ["cpu"]
    session = create_session(
        resolve_model_path(card),
        providers=ort_providers,
        card=card,
        dynamic_batch=card.task == "embedding" and card.input.dynamic_batch,
    )
    return list(session.get_providers())


def demo(as_json: JsonOpt = False) -> None:
    """Run the default pack end to end on the photos shipped with it: find Yao Ming among the players."""
    from .cards import DEFAULT_EMBEDDER
    from .model_files import load_card, resolve_model_path

    pack = resolve_model_path(load_card(DEFAULT_EMBEDDER)).parent
    probe, group = pack / "yaoming.jpg", pack / "players.jpg"
    m = matcher_for(None, None)
    probe_emb = m.embed(probe)[0]
    faces = m.embed(group, faces="all")
    sims = [float(probe_emb.vector @ f.vector) for f in faces]
    thr = m.threshold_for()
    best = max(range(len(sims)), key=sims.__getitem__)
    matches = [i for i, s in enumerate(sims) if s >= thr]
    if len(matches) != 1:
        raise CheckFailedError(f"expected exactly one face of {probe.name} in {group.name}, found {len(matches)}")
    result = {
        "probe": str(probe),
        "group": str(group),
        "faces_in_group": len(faces),
        "threshold": round(thr, 6),
        "best_face": faces[best].face.to_dict() if faces[best].face else None,
        "best_similarity": round(sims[best], 6),
        "matching_faces": len(matches),
    }
    emit(
        as_json,
        result,
        lambda: (
            f"{len(faces)} faces in {group.name}; {len(matches)} match {probe.name} "
            f"(best similarity {sims[best]:.3f}, threshold {thr:.3f})"
        ),
    )
