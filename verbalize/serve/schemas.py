"""Request and response bodies of the HTTP API (they also make the OpenAPI document at ``/docs``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictStr


class ClassifyRequest(BaseModel):
    """``POST /v1/classify``: one template and the texts to classify with it.

    Give ``texts`` (one string per item) or ``inputs`` (one object per item, field -> value;
    today's templates have the single field ``text``, templates with several placeholders will
    name theirs). Exactly one of the two.
    """

    model_config = ConfigDict(extra="forbid")

    template: StrictStr = Field(description="Name of a served template (see GET /v1/templates)")
    texts: list[StrictStr] | None = Field(default=None, description="Texts to classify, in order")
    inputs: list[dict[StrictStr, StrictStr]] | None = Field(
        default=None, description='Items as {field: value}, e.g. [{"text": "a fine film"}]'
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
    error: str = Field(description="Machine-readable code, e.g. unknown_template, empty_text, queue_full")
    message: str = Field(description="What is wrong, where, and how to fix it")
    location: str | None = Field(default=None, description="Where in the request, e.g. texts[3]")
