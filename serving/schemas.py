"""The bodies the API's write endpoints accept, validated by pydantic."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator


class NewUser(BaseModel):
    age: int | None = Field(None, ge=1, le=120,
                            description="Age in years (used where the release has age lists)")
    gender: Literal["M", "F"] | None = Field(None, description="M or F, as in MovieLens")
    occupation: str | None = Field(None, max_length=40)
    zip_code: str | None = Field(None, max_length=10, pattern=r"^[A-Za-z0-9 -]+$")
    preferred_genres: list[str] = Field(default_factory=list, max_length=19)

    @field_validator("occupation")
    @classmethod
    def _lower(cls, value: str | None) -> str | None:
        return value.strip().lower() if value else None


class NewRating(BaseModel):
    movie_id: int = Field(ge=1, le=2_147_483_647)
    rating: float = Field(ge=0.5, le=5, description="Stars, in half steps from 0.5 to 5")

    @field_validator("rating")
    @classmethod
    def _half_steps(cls, value: float) -> float:
        if value * 2 != int(value * 2):
            raise ValueError("ratings go in half-star steps (0.5, 1, ..., 5)")
        return value


class NewRatings(BaseModel):
    ratings: list[NewRating] = Field(min_length=1, max_length=500)
