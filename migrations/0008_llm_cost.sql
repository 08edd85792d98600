-- agw config store, schema 8: what each LLM call cost (docs/limits.md, "Prices and cost").
--
-- cost_usd: USD of the row's own token counts at its model's price; NULL when the model has no
-- price (or the row names no model). cost_source: where the price came from: catalog (the
-- price list shipped with agw), override (the managed model's pricing) or unpriced; NULL on
-- rows older than this schema and on rows that name no model.

ALTER TABLE llm_usage_events ADD COLUMN cost_usd REAL;
ALTER TABLE llm_usage_events ADD COLUMN cost_source TEXT;
