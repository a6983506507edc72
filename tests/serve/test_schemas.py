"""The answers of carid serve against their described shapes (carid.serve.schemas): the OpenAPI
schema lists every car, and real answers (a single model, a pipeline with several cars, a photo
with no car) validate against `PredictAnswer` with extra keys forbidden.

The pipeline is a `PipelinePredictor` over the fake detector and stub identifier of
tests/runtime/test_pipeline.py (no ONNX file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from carid.serve.schemas import PredictAnswer
from tests.runtime.test_pipeline import pipeline_predictor
from tests.runtime.test_predictor import CAR_CLASSES, stub_predictor
from tests.serve.test_api import client_for, comparable, image_bytes

CAR_FIELDS = (
    "box",
    "detection_score",
    "label",
    "probability",
    "unknown",
    "reason",
    "top_k",
    "make",
    "body_type",
    "year",
)


def test_openapi_schema_describes_every_car() -> None:
    schema = client_for(stub_predictor()[0]).get("/openapi.json").json()
    components = schema["components"]["schemas"]

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        if "$ref" in node:
            return components[node["$ref"].rsplit("/", 1)[-1]]
        options = [option for option in node.get("anyOf", []) if option.get("type") != "null"]
        return resolve(options[0]) if options else node

    ok = schema["paths"]["/predict"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    answer = resolve(ok)
    assert set(CAR_FIELDS) | {"cars", "explanation", "image_size", "timing"} <= set(answer["properties"])
    cars = answer["properties"]["cars"]
    assert cars["type"] == "array" and "largest" in cars["description"]
    car = resolve(cars["items"])
    assert set(CAR_FIELDS) <= set(car["properties"]) and "cars" not in car["properties"]
    assert set(resolve(car["properties"]["box"])["properties"]) == {"x1", "y1", "x2", "y2"}
    assert "detector" in car["properties"]["detection_score"]["description"]
    assert set(resolve(car["properties"]["top_k"]["items"])["properties"]) >= {"label", "probability", "make"}
    model_ok = schema["paths"]["/model"]["get"]["responses"]["200"]["content"]["application/json"]
    model = resolve(model_ok["schema"])
    assert {"kind", "pipeline", "detector", "crop", "explain"} <= set(model["properties"])


def test_a_single_model_answers_one_car(tmp_path: Path) -> None:
    client = client_for(stub_predictor()[0])
    answer = client.post("/predict", files={"file": image_bytes(tmp_path, "car.png", size=(80, 60))}).json()
    PredictAnswer.model_validate(answer)
    (car,) = answer["cars"]
    assert car == {key: value for key, value in answer.items() if key != "cars"}
    assert car["box"] is not None and car["detection_score"] is None and car["label"] == CAR_CLASSES[0]
    model = client.get("/model").json()
    assert model["kind"] == "model" and model["pipeline"] is False


BOXES = [(10, 10, 30, 30, 0.9), (100, 20, 180, 90, 0.6), (40, 40, 80, 80, 0.8), (150, 2, 158, 9, 0.7)]


def test_a_pipeline_answers_every_car_with_its_box(tmp_path: Path) -> None:
    predictor, backend, _ = pipeline_predictor(tmp_path, BOXES, original=(200, 100))
    predictor.source = Path("/srv/secret-models/pipeline")
    client = client_for(predictor)
    data = image_bytes(tmp_path, "street.png", size=(200, 100), seed=1)
    response = client.post("/predict", params={"top_k": 2}, files={"file": ("street.png", data)})
    assert response.status_code == 200, response.text
    answer = response.json()
    PredictAnswer.model_validate(answer)
    (expected,) = predictor.predict([data], top_k=2, names=["street.png"])
    assert comparable(answer) == comparable(expected.to_dict())
    cars = answer["cars"]
    # largest box first, each with its own box and detection score
    assert [[car["box"][key] for key in ("x1", "y1", "x2", "y2")] for car in cars] == [
        [100, 20, 180, 90],
        [40, 40, 80, 80],
        [10, 10, 30, 30],
        [150, 2, 158, 9],
    ]
    assert [car["detection_score"] for car in cars] == [0.6, 0.8, 0.9, 0.7]
    named, tiny = cars[:3], cars[3]
    assert all(car["label"] == CAR_CLASSES[0] and len(car["top_k"]) == 2 and car["make"] for car in named)
    assert tiny["unknown"] and tiny["label"] == "unknown" and "too small to name" in tiny["reason"]
    assert answer["box"] == cars[0]["box"] and answer["label"] == cars[0]["label"]
    assert sum(len(batch) for batch in backend.batches) == 6  # 3 crops here, 3 for `expected`

    model = client.get("/model")
    description = model.json()
    assert description["kind"] == "pipeline" and description["pipeline"] is True
    assert description["detector"] == {"input_size": [64, 48], "score_threshold": 0.4}
    assert description["crop"] == {"margin": 0.0, "square": False, "min_side": 16}
    assert "/srv/secret-models" not in model.text
    explain = description["explain"]
    assert explain["available"] is False and "pipeline" in explain["reason"]
    explained = client.post("/predict", params={"explain": "true"}, files={"file": ("street.png", data)})
    assert explained.status_code == 200
    assert explained.json()["explanation"] == {"available": False, "reason": explain["reason"]}


def test_a_photo_with_no_car_answers_200_with_no_cars_and_the_reason(tmp_path: Path) -> None:
    predictor, backend, _ = pipeline_predictor(tmp_path, [], original=(120, 90))
    response = client_for(predictor).post(
        "/predict", files={"file": ("empty.jpg", image_bytes(tmp_path, "empty.jpg", size=(120, 90), seed=2))}
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    PredictAnswer.model_validate(answer)
    assert answer["ok"] and answer["cars"] == [] and answer["label"] is None and answer["box"] is None
    assert answer["reason"].startswith("no car found") and "0.40" in answer["reason"]
    assert answer["image_size"] == [120, 90] and not backend.batches
