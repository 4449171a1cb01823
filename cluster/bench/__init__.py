"""`cluster bench`: benchmark reports like the field reports, against any OpenAI endpoint."""
