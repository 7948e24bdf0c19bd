"""The service's request and response shapes (pydantic): they validate the parameters (422 on a
bad one) and make the OpenAPI schema at ``/openapi.json``."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from manet import config


class SearchParams(BaseModel):
    """The parameters of ``POST /v1/search``: JSON fields, or multipart fields beside the photo."""

    model_config = ConfigDict(extra="forbid")

    image_id: int | None = Field(None, ge=1, description="A stored image to search with (JSON body only).")
    model: str | None = Field(None, min_length=1, max_length=63,
                              description="Model to search with (default: the server's --model).")
    k: int = Field(config.DEFAULT_K, ge=1, le=1000, description="Results to return.")
    category: str | None = Field(None, max_length=500, description="Only products of this category.")
    brand: str | None = Field(None, max_length=500, description="Only products of this brand.")
    ef_search: int | None = Field(None, ge=1, le=1000,
                                  description="HNSW candidate list (default: the server's, 400 with a filter).")
    rerank: str | None = Field(None, max_length=63, description="Re-rank the shortlist with this re-ranker "
                               "(aqe, alpha-qe).")
    rerank_params: dict[str, str | int | float | bool] | None = Field(
        None, description="The re-ranker's parameters, e.g. {\"top_n\": 3} (multipart: as JSON text).")
    shortlist: int = Field(config.DEFAULT_SHORTLIST, ge=1, le=1000, description="Candidates fetched for rerank.")


class HitOut(BaseModel):
    """One result: ``manet search --json``'s fields and the thumbnail's URL."""

    rank: int
    image_id: int
    product_id: int | None
    sku: str | None
    title: str | None
    brand: str | None
    score: float
    uri: str
    thumbnail_url: str


class SearchOut(BaseModel):
    model: str
    k: int
    hits: list[HitOut]


class ImageOut(BaseModel):
    id: int
    domain: str
    split: str | None
    width: int | None
    height: int | None
    status: str
    uri: str
    thumbnail_url: str


class ProductOut(BaseModel):
    id: int
    sku: str
    title: str | None
    brand: str | None
    description: str | None
    attributes: dict[str, Any]
    categories: list[str]
    images: list[ImageOut]


class ModelsOut(BaseModel):
    default: str | None = Field(description="The model of requests that name none.")
    models: list[dict[str, Any]] = Field(description="As `manet models list --json`.")


class ErrorOut(BaseModel):
    error: str = Field(description="What was wrong and how to fix it, one line.")


_ERRORS = {400: "The photo cannot be decoded (or is not an accepted format).",
           401: "No API key (the server has one).", 403: "Wrong API key.",
           404: "Unknown model, product or image.", 413: "The upload is over the server's cap.",
           415: "Neither multipart/form-data nor JSON.", 422: "A parameter is missing, out of range or unknown.",
           503: "The database is unreachable."}
#: The error answers every /v1 route may give, for the OpenAPI schema.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut, "description": text} for status, text in _ERRORS.items()}


def search_request_body() -> dict[str, Any]:
    """OpenAPI's requestBody of ``POST /v1/search``: a multipart photo or a JSON image id (the
    route reads the body itself, since it takes either)."""
    schema = SearchParams.model_json_schema()
    fields = {name: spec for name, spec in schema["properties"].items() if name not in ("image_id",)}
    fields["rerank_params"] = {"type": "string", "description": "JSON object text, e.g. {\"top_n\": 3}"}
    multipart = {"type": "object", "required": ["image"],
                 "properties": {"image": {"type": "string", "format": "binary",
                                          "description": "The photo: JPEG, PNG, WebP, GIF, BMP or TIFF."},
                                **fields}}
    json_schema = {**schema, "required": ["image_id"]}
    return {"required": True, "content": {"multipart/form-data": {"schema": multipart},
                                          "application/json": {"schema": json_schema}}}
