"""The History panel and the ``/history`` API: every video in the output folder, newest first, paged.

A click on a thumbnail plays the video, offers it for download, fills the tab that made it with its
settings (and switches to that tab), and sets :attr:`HistoryPanel.selected` to the video's name:
the hook for actions on a chosen output (e.g. a "Continue" button: its handler takes
``selected`` as input and looks the name up with :meth:`pusa_core.history.History.find`). Every
file shown or served is one the listing found; names from the page are looked up, never joined.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr
import numpy as np

from pusa_core.errors import PusaInputError
from pusa_core.history import DEFAULT_PER_PAGE, MAX_PER_PAGE, History, HistoryEntry
from ui.runner import input_error

PROMPT_CHARS = 60
TASK_LABELS = {"i2v": "Image-to-Video", "multiframe": "Multi-Frames", "v2v": "Video-to-Video", "t2v": "Text-to-Video"}
# Shown for a video whose first frame will not decode (the gallery needs a picture for every item).
NO_THUMBNAIL = np.full((64, 96, 3), 96, np.uint8)


@dataclass(frozen=True)
class HistoryPanel:
    gallery: gr.Gallery
    page_text: gr.Markdown
    newer: gr.Button
    older: gr.Button
    refresh: gr.Button
    video: gr.Video
    details: gr.Markdown
    message: gr.Markdown  # what loading its settings did
    download: gr.DownloadButton
    page: gr.State  # the page shown, from 1
    shown: gr.State  # the names on the page shown, in gallery order
    selected: gr.State  # the name of the chosen video, or None: the hook for actions on it
    continue_video: gr.Button  # these three act on the chosen video, as under a result (ui.continue_video)
    use_last_frame: gr.Button
    use_as_keyframe: gr.Button


def history_panel() -> HistoryPanel:
    """Rendered where called."""
    with gr.Row():
        newer = gr.Button("◀ Newer", size="sm", elem_id="history-newer", interactive=False)
        page_text = gr.Markdown(elem_id="history-page")
        older = gr.Button("Older ▶", size="sm", elem_id="history-older", interactive=False)
        refresh = gr.Button("Refresh", size="sm", elem_id="history-refresh")
    with gr.Row():
        with gr.Column(scale=3):
            gallery = gr.Gallery(
                label="Videos, newest first: click one to play it and load its settings", columns=4, height="auto",
                allow_preview=False, fit_columns=False, object_fit="contain", elem_id="history-gallery", interactive=False,
            )
        with gr.Column(scale=2):
            video = gr.Video(
                label="Chosen video", interactive=False, autoplay=True, loop=True, height=320, elem_id="history-video"
            )
            details = gr.Markdown(elem_id="history-details")
            message = gr.Markdown(elem_id="history-message")
            download = gr.DownloadButton("Download MP4", value=None, interactive=False, elem_id="history-download")
            with gr.Row():
                continue_video = gr.Button("Continue this video", size="sm", interactive=False, elem_id="history-continue")
                use_last_frame = gr.Button("Use last frame", size="sm", interactive=False, elem_id="history-use-last-frame")
                use_as_keyframe = gr.Button("Use as keyframe", size="sm", interactive=False, elem_id="history-use-keyframe")
    return HistoryPanel(
        gallery, page_text, newer, older, refresh, video, details, message, download, gr.State(1), gr.State([]),
        gr.State(None), continue_video, use_last_frame, use_as_keyframe,
    )


def _short(text: str) -> str:
    return text if len(text) <= PROMPT_CHARS else text[: PROMPT_CHARS - 1] + "…"


def caption(entry: HistoryEntry) -> str:
    when = entry.created_text[:16].replace("T", " ")
    return f"{TASK_LABELS.get(entry.task, entry.task)} · seed {entry.seed} · {when} · {_short(entry.prompt)}"


def describe(entry: HistoryEntry) -> str:
    length = f"{entry.frames} frames ({entry.seconds:g} s)" if entry.frames and entry.seconds else "length unknown"
    size = f"{entry.width}x{entry.height}, " if entry.width and entry.height else ""
    return (
        f"**{entry.name}**  \n{TASK_LABELS.get(entry.task, entry.task)} · seed {entry.seed} · {size}{length} · "
        f"made {entry.created_text.replace('T', ' ')}  \nPrompt: {entry.prompt or '(none)'}"
    )


def wire_history(
    panel: HistoryPanel, history: History, load: Callable[[str], list[Any]], load_targets: Sequence[Any],
    refresh_on: Sequence[Any] = (),
) -> None:
    """Wire the panel. ``load(settings_path)`` returns values for ``load_targets`` (a tab's form, the tabs, a message).

    ``refresh_on``: events (e.g. a tab's new result) after which the listing is read again.
    """

    def show(page: Any) -> list[Any]:
        try:
            listed = history.page(page, DEFAULT_PER_PAGE)
        except PusaInputError:
            listed = history.page(1, DEFAULT_PER_PAGE)
        if not listed.entries and listed.page > 1:  # the page emptied (retention): show the last one
            listed = history.page(listed.pages, DEFAULT_PER_PAGE)
        items = []
        for entry in listed.entries:
            thumb = history.thumbnail(entry)
            items.append((str(thumb) if thumb is not None else NO_THUMBNAIL, caption(entry)))
        text = (
            f"Page {listed.page} of {listed.pages} · {listed.total} video{'s' if listed.total != 1 else ''}"
            if listed.total else "No videos yet: what you generate appears here, and stays after a restart."
        )
        return [
            items, text, gr.update(interactive=listed.page > 1), gr.update(interactive=listed.page < listed.pages),
            listed.page, [entry.name for entry in listed.entries],
        ]

    listing = [panel.gallery, panel.page_text, panel.newer, panel.older, panel.page, panel.shown]
    private = {"queue": False, "api_visibility": "private"}
    panel.refresh.click(show, panel.page, listing, **private)
    panel.newer.click(lambda page: show(page - 1), panel.page, listing, **private)
    panel.older.click(lambda page: show(page + 1), panel.page, listing, **private)
    for event in refresh_on:
        event(show, panel.page, listing, **private)

    def choose(shown: list[str], evt: gr.SelectData) -> list[Any]:
        index = evt.index if isinstance(evt.index, int) else None
        if index is None or not 0 <= index < len(shown):
            raise gr.Error("History: that entry is no longer on this page; press Refresh.", title="Not found")
        try:
            entry = history.find(shown[index])
        except PusaInputError as err:
            raise input_error(err) from None
        try:
            loaded = load(str(entry.settings))
        except gr.Error as err:  # still play it: only its settings could not be read back
            loaded = [gr.skip()] * (len(load_targets) - 1) + [str(err.message)]
        video = str(entry.video)
        return [video, describe(entry), gr.update(value=video, interactive=True), entry.name, *loaded]

    panel.gallery.select(
        choose, panel.shown, [panel.video, panel.details, panel.download, panel.selected, *load_targets], **private
    )


def history_api(history: History) -> Callable[..., dict[str, Any]]:
    """The ``/history`` endpoint's function: typed, so ``gr.api`` documents it for gradio_client."""

    def history_page(page: int = 1, per_page: int = DEFAULT_PER_PAGE) -> dict[str, Any]:
        try:
            return history.page(page, per_page).as_json()
        except PusaInputError as err:
            raise input_error(err) from None

    history_page.__doc__ = (
        f"A page of the output folder's videos, newest first: `page` from 1, `per_page` from 1 to {MAX_PER_PAGE}. "
        "Returns {page, per_page, pages, total, entries: [{name, task, prompt, seed, created, frames, seconds, "
        "fps, width, height}]}."
    )
    return history_page
