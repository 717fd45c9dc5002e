"""Helpers of the Circe property tests: toy CDMs as DuckDB files, Circe JSON from `CohortExpression`, strategies."""
