"""The transactional outbox and what it sends: messages written in the transaction of the change
behind them, the emails (templates, wording, SMTP or a folder). Imports no domain package."""
