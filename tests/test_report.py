"""Per-case HTML + PNG reports and the index: valid HTML, relative links to existing files, every case listed."""
import os
from html.parser import HTMLParser
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from nnunet_mtl.prediction_table import make_row
from nnunet_mtl.outputs.report.figure import representative_slice
from nnunet_mtl.outputs.report.pages import case_stem, write_case_report, write_index
from nnunet_mtl.targets import Target, TargetSpec

SPEC = TargetSpec((Target("pneumoperitoneum", "classification", ("no", "yes")),
                   Target("subtype", "classification", ("a", "b", "c")),
                   Target("age", "regression", unit="d")))
VOID = {"meta", "img", "br", "link", "input", "hr"}


class PageParser(HTMLParser):
    """Collects links and image sources and checks that every non-void element is closed in order."""

    def __init__(self):
        super().__init__()
        self.stack, self.links, self.images, self.errors, self.text = [], [], [], [], []
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a":
            self.links.append(a.get("href"))
        if tag == "img":
            self.images.append(a.get("src"))
            if not a.get("alt"):
                self.errors.append("img without alt")
        if tag in ("script", "link"):
            self.scripts += 1
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(f"unbalanced </{tag}>")

    def handle_data(self, data):
        self.text.append(data)


def parse(path):
    p = PageParser()
    with open(path, encoding="utf-8") as f:
        source = f.read()
    assert source.startswith("<!DOCTYPE html>")
    p.feed(source)
    p.close()
    assert not p.errors and not p.stack, (p.errors, p.stack)
    assert p.scripts == 0  # nothing external, nothing to run
    return p, source


def assert_local_targets_exist(page_path, refs):
    for ref in refs:
        assert ref and "://" not in ref and not ref.startswith("/"), ref
        target = os.path.normpath(os.path.join(os.path.dirname(page_path), unquote(ref)))
        assert os.path.isfile(target), ref


def row(case_id, p_yes, subtype=(0.2, 0.5, 0.3), age=3.0):
    return make_row(SPEC, case_id, {"pneumoperitoneum": np.array([1 - p_yes, p_yes]),
                                    "subtype": np.array(subtype), "age": np.array([age])})


def volume_case(seed=0):
    rng = np.random.default_rng(seed)
    image = rng.normal(0, 1, (5, 32, 40)).astype(np.float32)
    mask = np.zeros(image.shape, np.uint8)
    mask[1, 10:14, 10:14] = 1
    mask[3, 5:25, 8:30] = 1
    mask[3, 10:15, 12:20] = 2
    return image, mask


def test_representative_slice_is_the_one_with_most_foreground():
    _, mask = volume_case()
    assert representative_slice(mask, 5) == 3
    assert representative_slice(np.zeros_like(mask), 5) == 2
    assert representative_slice(None, 1) == 0


def test_case_page_of_a_volume_with_gradcam(tmp_path):
    image, mask = volume_case()
    cam = tmp_path / "cam.png"
    Image.fromarray(np.linspace(0, 255, 32 * 40, dtype=np.uint8).reshape(32, 40)).save(cam)
    out = tmp_path / "report"
    r = row("case 01/a", 0.93)
    rep = write_case_report(image, mask, r, SPEC, str(out), cam_png=str(cam), calibrated=True,
                            spacing=(2.5, 0.8, 0.8), label_names={"background": 0, "bowel": 1, "air": 2})
    write_index(str(out), [r], SPEC)
    assert rep.slice_index == 3 and os.path.basename(rep.html) == "case_01_a.html"
    p, source = parse(rep.html)
    assert_local_targets_exist(rep.html, p.images + p.links)
    assert any("gradcam" in s for s in p.images) and "../index.html" in p.links
    text = " ".join(p.text)
    assert "case 01/a" in text and "0.930" in text and "calibrated (temperature scaling" in text
    assert "slice 3 of 0..4" in text and "3 d" in text
    with Image.open(rep.png) as im:
        assert im.format == "PNG" and im.width > im.height


def test_case_page_of_a_radiograph_without_mask_or_cam_says_uncalibrated(tmp_path):
    image = np.random.default_rng(1).normal(size=(1, 24, 24))
    r = row("cxr_1", 0.2)
    r["probabilities_calibrated"] = "no"
    rep = write_case_report(image, None, r, SPEC, str(tmp_path))
    write_index(str(tmp_path), [r], SPEC)
    p, _ = parse(rep.html)
    assert_local_targets_exist(rep.html, p.images + p.links)
    assert "not calibrated (raw softmax)" in " ".join(p.text) and len(p.images) == 1


def test_index_lists_every_case_sorted_by_probability(tmp_path):
    image, mask = volume_case()
    rows = [row("c_low", 0.1), row("c_high", 0.95), row("c_mid", 0.5), row("no_page", 0.7)]
    for r in rows[:3]:
        write_case_report(image, mask, r, SPEC, str(tmp_path))
    path = write_index(str(tmp_path), rows, SPEC)
    p, source = parse(path)
    assert_local_targets_exist(path, p.images + p.links)
    order = [source.index(f">{c}<") for c in ("c_high", "no_page", "c_mid", "c_low")]
    assert order == sorted(order)
    assert "4 cases, sorted by p(pneumoperitoneum = yes), highest first" in " ".join(p.text)
    assert len(p.images) == 3 and "cases/no_page.html" not in p.links


def test_index_sorted_by_a_multiclass_target(tmp_path):
    rows = [row("x", 0.5, subtype=(0.6, 0.3, 0.1)), row("y", 0.5, subtype=(0.1, 0.1, 0.8))]
    path = write_index(str(tmp_path), rows, SPEC, sort_target="subtype")
    _, source = parse(path)
    assert source.index(">y<") < source.index(">x<")
    assert "p(predicted subtype class)" in source
    path = write_index(str(tmp_path), rows, SPEC, sort_target="subtype", sort_class="a")
    _, source = parse(path)
    assert source.index(">x<") < source.index(">y<")
    with pytest.raises(ValueError, match="regression"):
        write_index(str(tmp_path), rows, SPEC, sort_target="age")


def test_case_stem_is_a_safe_file_name():
    assert case_stem("a b/c<d>.e-f_g") == "a_b_c_d_.e-f_g"


def test_folder_report_from_files(tmp_path):
    import SimpleITK as sitk
    from nnunet_mtl import prediction_table
    from nnunet_mtl.outputs.report.folder import write_folder_report
    image, mask = volume_case()
    rows = [row("c1", 0.3), row("c2", 0.8), row("c3", 0.6)]
    prediction_table.write(str(tmp_path / "predictions.csv"), "", SPEC, rows)
    images, masks = {}, {}
    for cid in ("c1", "c2"):
        for kind, arr, store in (("img", image, images), ("seg", mask, masks)):
            itk = sitk.GetImageFromArray(arr)
            itk.SetSpacing((0.8, 0.8, 2.5))
            store[cid] = str(tmp_path / f"{cid}_{kind}.nii.gz")
            sitk.WriteImage(itk, store[cid])
    index = write_folder_report(str(tmp_path / "report"), str(tmp_path / "predictions.csv"), SPEC, images,
                                mask_files=masks, label_names={"background": 0, "a": 1, "b": 2})
    p, source = parse(index)
    assert_local_targets_exist(index, p.images + p.links)
    order = [source.index(f">{c}<") for c in ("c2", "c3", "c1")]
    assert order == sorted(order)
    assert "cases/c3.html" not in p.links and len(p.images) == 2


def review_row(case_id, p_yes, subtype_set="b", needs_review="no", quality=None, ood=None, interval=("2.5", "4.5")):
    """A row as the predictor writes it with the review columns (conformal set/interval, checks)."""
    from nnunet_mtl import case_checks
    outputs = {"pneumoperitoneum": np.array([1 - p_yes, p_yes]), "subtype": np.array([0.2, 0.5, 0.3]),
               "age": np.array([3.0])}
    if quality is not None:
        outputs[case_checks.RAW_SEG_QUALITY] = np.array([quality])
    if ood is not None:
        outputs[case_checks.RAW_FEATURES] = np.array([ood])
    review = {"pneumoperitoneum_set": "yes", "subtype_set": subtype_set, "age_low": interval[0],
              "age_high": interval[1], "conformal_coverage": "0.9", "needs_review": needs_review}
    return make_row(SPEC, case_id, outputs, review=review)


def test_case_page_shows_the_review_columns_and_the_flags(tmp_path):
    r = review_row("c_flag", 0.9, subtype_set="a|b", needs_review="yes", quality=0.31, ood=3.2,
                   interval=("-inf", "inf"))
    rep = write_case_report(np.zeros((1, 16, 16)), None, r, SPEC, str(tmp_path))
    p, source = parse(rep.html)
    text = " ".join(p.text)
    assert "Flagged for review: needs_review, seg_quality_flag, ood_flag" in text
    assert "subtype: prediction set" in text and "a, b" in text and "-∞ to ∞ d" in text
    assert "0.31 (flagged: below the fold's threshold)" in text and "3.2 (flagged: above 1)" in text
    assert source.count('<tr class="flagged">') == 5  # the set, the interval, needs_review, seg_quality, ood_score
    calm = write_case_report(np.zeros((1, 16, 16)), None, review_row("c_ok", 0.2, quality=0.9, ood=0.4), SPEC,
                             str(tmp_path))
    _, source = parse(calm.html)
    assert "No review flag raised" in source and 'class="flagged"' not in source


def test_index_lists_flagged_cases_first_and_counts_them(tmp_path):
    rows = [review_row("sure_high", 0.95, quality=0.9, ood=0.2), review_row("unsure", 0.1, subtype_set="a|c",
                                                                           needs_review="yes", quality=0.9),
            review_row("bad_mask", 0.5, quality=0.2, ood=0.3), review_row("odd_input", 0.3, ood=4.0)]
    rows[3].pop("seg_quality", None)  # a case without a mask score: no cell, no error
    rows.append(dict(row("garbled", 0.6), needs_review="maybe", seg_quality="n/a", seg_quality_flag="no"))
    path = write_index(str(tmp_path), rows, SPEC)
    p, source = parse(path)
    text = " ".join(p.text)
    assert "3 of 5 cases flagged for review" in text and "flagged first, then p(pneumoperitoneum = yes)" in text
    order = [source.index(f">{c}<") for c in ("bad_mask", "odd_input", "unsure", "sure_high", "garbled")]
    assert order == sorted(order)  # flagged ones by probability, then the others
    assert source.count('<tr class="flagged">') == 3 and "<th>review</th>" in source
    flagged_line = next(line for line in source.splitlines() if ">bad_mask<" in line)
    assert "seg_quality_flag" in flagged_line and "seg_quality: 0.2 (flagged" in flagged_line
    assert "subtype: prediction set: a, c" in next(line for line in source.splitlines() if ">unsure<" in line)


def test_index_and_page_of_an_older_table_have_no_review_column(tmp_path):
    old = {k: v for k, v in row("old", 0.4).items() if not k.endswith(("_set", "_low", "_high"))
           and k not in ("conformal_coverage", "needs_review")}
    rep = write_case_report(np.zeros((1, 8, 8)), None, old, SPEC, str(tmp_path))
    _, page = parse(rep.html)
    _, index = parse(write_index(str(tmp_path), [old], SPEC))
    assert "Review" not in page and "review" not in index.lower().replace("nnunet_mtl case review", "")
