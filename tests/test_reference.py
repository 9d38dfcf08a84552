"""Reference photos and species cards: the bundle's stored photos, the buttons, the links."""

from __future__ import annotations

import io
import json
from pathlib import Path
from urllib.parse import quote

import pytest
from PIL import Image

from bot.callbacks import Action, get_signer, prediction_binding
from bot.i18n import text
from bot.species_card import SPECIES_LINKS_PATH, article_url, species_articles, species_card, wikipedia_link
from classifier.bundle import Bundle
from classifier.labels import LabelSet
from classifier.references import MAX_SIDE, add_reference_photos, has_reference_photos, reference_paths
from tests.emulator import inline_buttons, make_user, private_chat
from tests.fixtures.bot import FLOWERS5_CLASSES, BotHarness
from tests.fixtures.honesty import REFERENCES_PER_CLASS, HonestBundle
from tests.test_training_data import make_image_folder
from training.data import DataSpec
from training.recipe import Recipe
from training.train import train

ALICE = make_user(5301, "Alice", language_code="en")
BOB = make_user(5302, "Bob", language_code="en")
LI = make_user(5303, "Li", language_code="zh-hans")


def button_with(message: dict, action: Action) -> dict:
    buttons = [button for button in inline_buttons(message) if (button.get("callback_data") or "").startswith(action.value)]
    assert len(buttons) == 1, f"expected one {action.name} button, got {buttons}"
    return buttons[0]


async def answered_photo(bot: BotHarness, user: dict, data: bytes) -> tuple[dict, dict]:
    """Send a photo and return (photo message, answer)."""
    photo = bot.emulator.send_photo(user, None, data)
    answer = await bot.emulator.wait_for_reply(photo)
    await bot.wait_idle()
    return photo, answer


# -- reference photos in the bundle ----------------------------------------------------


def test_bundle_keeps_references_when_saved_again(honest_bundle: HonestBundle, tmp_path: Path) -> None:
    bundle = honest_bundle.bundle
    assert sorted(bundle.references) == ["0", "1", "2", "3", "4"]
    assert all(len(names) == REFERENCES_PER_CLASS for names in bundle.references.values())
    for index in range(5):
        for path in reference_paths(bundle, index):
            with Image.open(path) as image:
                assert image.format == "JPEG"
                assert max(image.size) <= MAX_SIDE

    # Saving a loaded bundle elsewhere, as export and retraining do, carries the photos along.
    copy = Bundle.load(honest_bundle.directory)
    copy.save(tmp_path / "copy")
    again = Bundle.load(tmp_path / "copy")
    assert again.references == bundle.references
    assert [path.read_bytes() for path in reference_paths(again, 3)] == [path.read_bytes() for path in reference_paths(bundle, 3)]


def test_reference_choice_is_seeded(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "data", {"a": 6, "b": 6}, splits=("train",))
    samples = [(path, 0 if path.parent.name == "a" else 1) for path in sorted((tmp_path / "data" / "train").rglob("*.jpg"))]
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    samples.insert(0, (tmp_path / "broken.jpg", 0))

    def choose(seed: int) -> dict[str, list[bytes]]:
        bundle = Bundle(version="v", labels=LabelSet.from_names(["a", "b"]))
        scratch = tmp_path / f"scratch-{seed}-{len(list(tmp_path.iterdir()))}"
        files = add_reference_photos(bundle, samples, scratch, per_class=2, seed=seed)
        return {name: files[name].read_bytes() for name in sorted(files)}

    first, same, other = choose(0), choose(0), choose(1)
    assert sorted(first) == ["references/0-0.jpg", "references/0-1.jpg", "references/1-0.jpg", "references/1-1.jpg"]
    assert first == same
    assert first != other


def test_bundle_without_references(flowers5_bundle: Bundle) -> None:
    assert flowers5_bundle.references == {}
    assert not has_reference_photos(flowers5_bundle)
    assert reference_paths(flowers5_bundle, 0) == []


@pytest.mark.slow
def test_training_stores_references_and_uses_non_flowers(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", {"a": 4, "b": 4}, val_count=2)
    not_flowers = []
    for number in range(3):
        path = tmp_path / "not-flowers" / f"{number}.png"
        path.parent.mkdir(exist_ok=True)
        Image.new("RGB", (80, 60), (number * 80, 200, 30)).save(path)
        not_flowers.append(path)
    recipe = Recipe(epochs=1, views=1, crop_size=64, resize_size=72, workers=0, ood_synthetic=0)

    bundle = train(recipe, DataSpec(source=str(data)), "none", tmp_path / "model", non_flower_examples=not_flowers, show_progress_bar=False)

    loaded = Bundle.load(tmp_path / "model")
    assert loaded.references == bundle.references
    assert sorted(loaded.references) == ["0", "1"]
    assert all(1 <= len(reference_paths(loaded, index)) <= 3 for index in (0, 1))
    # "Not a flower" photos set the OOD threshold.
    assert loaded.ood["non_flower_source"] == "examples"
    assert loaded.ood["non_flower_samples"] == 3
    assert loaded.ood["method"] == "youden_capped"


# -- the buttons through the emulator --------------------------------------------------


async def test_reference_button_sends_media_group(honest_bot: BotHarness, honest_bundle: HonestBundle) -> None:
    emulator = honest_bot.emulator
    _photo, answer = await answered_photo(honest_bot, ALICE, honest_bundle.flower_photos[1].read_bytes())
    button = button_with(answer, Action.REFERENCE_PHOTOS)
    assert button["text"] == text("reference.button.photos", "en")

    query = emulator.press_button(ALICE, None, answer, button["callback_data"])
    calls = await emulator.wait_for_call("sendMediaGroup")
    notice = await emulator.wait_for_callback_answer(query)
    await honest_bot.wait_idle()

    assert notice.get("text") is None
    media = calls[0].params["media"]
    assert len(media) == 3
    row = await honest_bot.repository.get_prediction_by_message(ALICE["id"], _photo["message_id"])
    labels = honest_bundle.bundle.labels
    listed = [labels.index_of(entry["class_id"]) for entry in row.top_k]
    assert [item["caption"] for item in media] == [f"{rank}. {labels.display_name(index, 'en')}" for rank, index in enumerate(listed, 1)]
    album = [message for message in emulator.sent_messages(ALICE["id"]) if message.get("media_group_id")]
    assert len(album) == 3
    assert all(message["reply_to_message"]["message_id"] == answer["message_id"] for message in album)
    # Each sent photo is one of its species' stored reference photos.
    for message, index in zip(album, listed):
        sent = emulator.file_bytes(message["photo"][-1]["file_id"])
        assert sent in [path.read_bytes() for path in reference_paths(honest_bundle.bundle, index)]


async def test_second_press_sends_nothing(honest_bot: BotHarness, honest_bundle: HonestBundle) -> None:
    emulator = honest_bot.emulator
    _photo, answer = await answered_photo(honest_bot, ALICE, honest_bundle.flower_photos[2].read_bytes())
    data = button_with(answer, Action.REFERENCE_PHOTOS)["callback_data"]

    first = emulator.press_button(ALICE, None, answer, data)
    await emulator.wait_for_call("sendMediaGroup")
    await emulator.wait_for_callback_answer(first)
    second = emulator.press_button(ALICE, None, answer, data)
    notice = await emulator.wait_for_callback_answer(second)
    await honest_bot.wait_idle()

    assert notice["text"] == text("reference.notice.already_sent", "en")
    assert len(emulator.calls_to("sendMediaGroup")) == 1


async def test_no_reference_button_without_photos(flowerbot: BotHarness, flowers5_val_photos: list[Path]) -> None:
    emulator = flowerbot.emulator
    photo, answer = await answered_photo(flowerbot, ALICE, flowers5_val_photos[4].read_bytes())
    assert not [b for b in inline_buttons(answer) if (b.get("callback_data") or "").startswith(Action.REFERENCE_PHOTOS.value)]

    # A button from a bundle that had photos, pressed after a swap to one without.
    row = await flowerbot.repository.get_prediction_by_message(ALICE["id"], photo["message_id"])
    data = get_signer(flowerbot.context).encode(Action.REFERENCE_PHOTOS, row.id, binding=prediction_binding(row))
    query = emulator.press_button(ALICE, None, answer, data, require_button=False)
    notice = await emulator.wait_for_callback_answer(query)
    await flowerbot.wait_idle()

    assert notice["text"] == text("reference.notice.none", "en")
    assert emulator.calls_to("sendMediaGroup") == []
    assert emulator.calls_to("sendPhoto") == []


async def test_forged_reference_button_rejected(honest_bot: BotHarness, honest_bundle: HonestBundle) -> None:
    emulator = honest_bot.emulator
    _photo, answer = await answered_photo(honest_bot, ALICE, honest_bundle.flower_photos[3].read_bytes())
    data = button_with(answer, Action.REFERENCE_PHOTOS)["callback_data"]
    forged = data[:-1] + ("A" if data[-1] != "A" else "B")

    query = emulator.press_button(ALICE, None, answer, forged, require_button=False)
    notice = await emulator.wait_for_callback_answer(query)
    await honest_bot.wait_idle()

    assert notice["text"] == text("reference.notice.invalid_button", "en")
    assert emulator.calls_to("sendMediaGroup") == []


async def test_species_card_in_english(honest_bot: BotHarness, honest_bundle: HonestBundle) -> None:
    emulator = honest_bot.emulator
    photo, answer = await answered_photo(honest_bot, ALICE, honest_bundle.flower_photos[0].read_bytes())
    row = await honest_bot.repository.get_prediction_by_message(ALICE["id"], photo["message_id"])
    top = row.top_k[0]["class_id"]
    button = button_with(answer, Action.SPECIES_CARD)
    assert button["text"] == text("reference.button.about", "en", name=top)

    # Anyone in the chat may open it, not only the photo's sender.
    emulator.press_button(BOB, private_chat(ALICE), answer, button["callback_data"])
    card = await emulator.wait_for_response(answer)
    await honest_bot.wait_idle()

    title = species_articles()[top]["en"]
    assert f'href="https://en.wikipedia.org/wiki/{title.replace(" ", "_")}"' in card["text"]
    assert card["text"].splitlines()[0] == f"📖 <b>{top}</b>"
    chinese = honest_bundle.bundle.labels.display_name(honest_bundle.bundle.labels.index_of(top), "zh")
    assert text("species.card.name_zh", "en", name=chinese) in card["text"]
    assert card["reply_to_message"]["message_id"] == answer["message_id"]
    card_call = [call for call in emulator.calls_to("sendMessage") if call.params.get("text") == card["text"]]
    assert card_call[0].params["parse_mode"] == "HTML"
    # The card offers the other two listed species.
    others = [entry["class_id"] for entry in row.top_k[1:]]
    assert [b["text"] for b in inline_buttons(card)] == [text("reference.button.about", "en", name=name) for name in others]


async def test_species_card_in_chinese_switches(honest_bot: BotHarness, honest_bundle: HonestBundle) -> None:
    emulator = honest_bot.emulator
    photo, answer = await answered_photo(honest_bot, LI, honest_bundle.flower_photos[4].read_bytes())
    row = await honest_bot.repository.get_prediction_by_message(LI["id"], photo["message_id"])
    emulator.press_button(LI, None, answer, button_with(answer, Action.SPECIES_CARD)["callback_data"])
    card = await emulator.wait_for_response(answer)
    await honest_bot.wait_idle()

    top = row.top_k[0]["class_id"]
    zh_title = species_articles()[top]["zh"]
    assert f'href="https://zh.wikipedia.org/wiki/{quote(zh_title)}"' in card["text"]
    assert text("species.card.name_en", "zh", name=top) in card["text"]

    # A button on the card switches it, in place, to the second listed species.
    second = row.top_k[1]["class_id"]
    emulator.press_button(LI, None, card, inline_buttons(card)[0]["callback_data"])
    await emulator.wait_for_call("editMessageText")
    await honest_bot.wait_idle()
    edited = emulator.message(LI["id"], card["message_id"])
    assert f"https://zh.wikipedia.org/wiki/{quote(species_articles()[second]['zh'])}" in edited["text"]
    assert len([m for m in emulator.sent_messages(LI["id"]) if "wikipedia.org" in m.get("text", "")]) == 1


# -- species links ------------------------------------------------------------------------


def test_links_cover_every_known_class() -> None:
    oxford = LabelSet.oxford102()
    articles = species_articles()
    missing = [class_id for class_id in (*oxford.class_ids, *FLOWERS5_CLASSES) if class_id not in articles]
    assert missing == []
    assert all(titles.get("en") for titles in articles.values())
    document = json.loads(SPECIES_LINKS_PATH.read_text(encoding="utf-8"))
    assert set(document) == {"description", "articles"}


def test_link_fallbacks() -> None:
    oxford = LabelSet.oxford102()
    cape = oxford.index_of("cape flower")  # has no Chinese title
    custom = LabelSet.from_names(["Blue Poppy Seedling", "Ghost Orchid"])

    assert wikipedia_link(oxford, cape, "zh").url == "https://en.wikipedia.org/wiki/Nerine"
    assert text("species.card.wikipedia_english", "zh", url="https://en.wikipedia.org/wiki/Nerine", title="Nerine") in species_card(oxford, cape, "zh")
    search = wikipedia_link(custom, 0, "en")
    assert search.is_search
    assert search.url == "https://en.wikipedia.org/w/index.php?search=Blue+Poppy+Seedling"
    assert article_url("Canna (plant)", "en") == "https://en.wikipedia.org/wiki/Canna_(plant)"
    assert article_url("向日葵", "zh") == "https://zh.wikipedia.org/wiki/%E5%90%91%E6%97%A5%E8%91%B5"


def test_card_escapes_html() -> None:
    labels = LabelSet.from_names(["a<b>&c", "plain"])
    card = species_card(labels, 0, "en")
    assert "a&lt;b&gt;&amp;c" in card
    assert "<b>a<b>" not in card


def test_reference_jpeg_is_small(tmp_path: Path) -> None:
    source = tmp_path / "big.png"
    Image.new("RGB", (2000, 1000), (200, 30, 90)).save(source)
    bundle = Bundle(version="v", labels=LabelSet.from_names(["only", "other"]))

    files = add_reference_photos(bundle, [(source, 0)], tmp_path / "scratch", per_class=3)

    assert bundle.references == {"0": ["references/0-0.jpg"]}
    with Image.open(io.BytesIO(files["references/0-0.jpg"].read_bytes())) as image:
        assert image.size == (MAX_SIDE, MAX_SIDE // 2)
