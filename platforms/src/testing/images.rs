//! A web server holding images, as the pages people share link them: each path answers its
//! bytes with a content type, can redirect, and can be changed or removed later (an image URL
//! that expires after the share was accepted).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    extract::{Path, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};

use super::recorder::{Recorder, serve};

#[derive(Clone)]
enum Entry {
    File {
        content_type: String,
        bytes: Vec<u8>,
    },
    Redirect(String),
}

#[derive(Clone)]
pub struct ImageHost {
    pub base: String,
    pub recorder: Recorder,
    files: Arc<Mutex<HashMap<String, Entry>>>,
}

impl ImageHost {
    pub async fn start() -> Self {
        let files: Arc<Mutex<HashMap<String, Entry>>> = Arc::default();
        let recorder = Recorder::default();
        let app = Router::new()
            .route("/{*path}", get(file))
            .with_state(files.clone());
        let base = serve(recorder.layer(app)).await;
        Self {
            base,
            recorder,
            files,
        }
    }

    /// Serves `bytes` at `/{name}`; answers its URL.
    pub fn put(&self, name: &str, content_type: &str, bytes: Vec<u8>) -> String {
        self.files.lock().unwrap().insert(
            name.to_owned(),
            Entry::File {
                content_type: content_type.to_owned(),
                bytes,
            },
        );
        self.url(name)
    }

    /// `/{name}` answers `302` to `to`.
    pub fn redirect(&self, name: &str, to: &str) -> String {
        self.files
            .lock()
            .unwrap()
            .insert(name.to_owned(), Entry::Redirect(to.to_owned()));
        self.url(name)
    }

    /// `/{name}` answers 404 from now on.
    pub fn remove(&self, name: &str) {
        self.files.lock().unwrap().remove(name);
    }

    pub fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.base)
    }

    /// How many times `/{name}` was requested.
    pub fn hits(&self, name: &str) -> usize {
        self.recorder.to(&format!("/{name}")).len()
    }
}

async fn file(
    State(files): State<Arc<Mutex<HashMap<String, Entry>>>>,
    Path(path): Path<String>,
) -> Response {
    match files.lock().unwrap().get(&path).cloned() {
        Some(Entry::File {
            content_type,
            bytes,
        }) => ([(header::CONTENT_TYPE, content_type)], bytes).into_response(),
        Some(Entry::Redirect(to)) => (StatusCode::FOUND, [(header::LOCATION, to)]).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
