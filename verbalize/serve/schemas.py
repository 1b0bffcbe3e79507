"""Request and response bodies of the HTTP API (they also make the OpenAPI document at ``/docs``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictStr


class ClassifyRequest(BaseModel):
    """``POST /v1/classify``: one template and the rows to classify with it.

    Give ``inputs`` (one object per row, keyed by the template's field names as ``GET /v1/templates``
    lists them: ``{"text": ...}``, or ``{"premise": ..., "hypothesis": ...}`` for a pair template), or,
    for a template with one field, ``texts`` (one string per row). Exactly one of the two.
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"template": "sst2", "texts": ["a charming film", "two hours I will never get back"]},
                {"template": "same_sentiment", "inputs": [{"review1": "A gem.", "review2": "Loved it."}]},
            ]
        },
    )

    template: StrictStr = Field(description="Name of a served template (see GET /v1/templates)")
    texts: list[StrictStr] | None = Field(
        default=None, description="Texts to classify, in order; only for a template with one field"
    )
    inputs: list[dict[StrictStr, StrictStr]] | None = Field(
        default=None,
        description="Rows to classify, in order, each an object {field: text} holding every field of the "
        'template (its "fields" in GET /v1/templates), e.g. [{"text": "a fine film"}] or '
        '[{"review1": "A gem.", "review2": "Loved it."}]',
    )


class Prediction(BaseModel):
    label: str = Field(description="The most probable label")
    probabilities: dict[str, float] = Field(description="Every label's probability (template label order)")


class ClassifyResponse(BaseModel):
    template: str
    version: int = Field(description="Served version of the template (1, then +1 per valid reload)")
    labels: list[str] = Field(description="The template's labels in order")
    predictions: list[Prediction] = Field(description="One per input, in input order")


class ErrorResponse(BaseModel):
    error: str = Field(
        description="Machine-readable code, e.g. unknown_template, missing_field, empty_text, queue_full"
    )
    message: str = Field(description="What is wrong, where, and how to fix it")
    location: str | None = Field(default=None, description="Where in the request, e.g. texts[3], inputs[0].review2")
