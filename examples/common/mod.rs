//! What the examples `axum_app`, `actix_app` and `worker` share: reading
//! their pool settings, and a throwaway PostgreSQL for a one-command try.
//!
//! Not an example of its own (Cargo builds `examples/*.rs` and
//! `examples/*/main.rs`, not this directory); each of those examples says
//! `mod common;`. Copying one into your app? Bring [`settings`] along
//! (your config layering); [`throwaway_unless_configured`] is for trying
//! the example out and has no place in production code.

/// The pool's settings as [`pgrotate::Config`]: the JSON file `file` (in
/// `main`, the one named by `PGROTATE_CONFIG`, if set), then `PGROTATE__…`
/// variables over it — `PGROTATE__MAX_SIZE=16`,
/// `PGROTATE__SOURCE__KIND=file`, `PGROTATE__SOURCE__PATH=/run/secrets/db_url`,
/// `PGROTATE__WAIT_TIMEOUT=5s` — read from `env` when given, else from the
/// process's environment. With no source set, the URL is read from
/// `DATABASE_URL`, again after every rotation; `max_size` defaults to
/// `default_max_size` (the example's own choice) when neither layer sets it.
pub(crate) fn settings(
    file: Option<&str>,
    env: Option<config::Map<String, String>>,
    default_max_size: usize,
) -> Result<pgrotate::Config, config::ConfigError> {
    let mut layers = config::Config::builder();
    if let Some(file) = file {
        layers = layers.add_source(config::File::new(file, config::FileFormat::Json));
    }
    let mut settings: pgrotate::Config = layers
        .add_source(
            config::Environment::with_prefix("PGROTATE")
                .separator("__")
                .source(env),
        )
        .build()?
        .try_deserialize()?;
    settings.max_size.get_or_insert(default_max_size);
    Ok(settings)
}

/// A throwaway PostgreSQL and the file that holds its URL: the server
/// stops and both are removed when this is dropped, so keep it until the
/// pool is closed (in `main`, until it returns).
pub(crate) struct Throwaway {
    _url_file: tempfile::NamedTempFile,
    _cluster: pgrotate_testing::Cluster,
}

/// With neither a source in `settings` nor `DATABASE_URL` set: starts a
/// throwaway PostgreSQL (with a role named after `role_name`), writes its
/// URL in a temporary file and points `settings` at that file
/// ([`pgrotate::SourceConfig::File`]). `None`, and `settings` untouched,
/// when the example was told where its database is.
pub(crate) async fn throwaway_unless_configured(
    settings: &mut pgrotate::Config,
    role_name: &str,
) -> Result<Option<Throwaway>, Box<dyn std::error::Error>> {
    if settings.source.is_some() || std::env::var_os("DATABASE_URL").is_some() {
        return Ok(None);
    }
    eprintln!("no source and no DATABASE_URL: starting a throwaway PostgreSQL…");
    let cluster = pgrotate_testing::Cluster::start().await?;
    let role = cluster.create_role(role_name).await?;
    let url_file = tempfile::NamedTempFile::new()?;
    std::fs::write(url_file.path(), cluster.url(&role))?;
    settings.source = Some(pgrotate::SourceConfig::File {
        path: url_file.path().into(),
    });
    Ok(Some(Throwaway {
        _url_file: url_file,
        _cluster: cluster,
    }))
}
