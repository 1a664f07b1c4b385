"""Payment gateway adapters against the official SDKs and fake gateway servers over real HTTP."""
