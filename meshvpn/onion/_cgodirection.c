/*
 * One direction of a hop's CGO layer (meshvpn/onion/cgo.py), in C over OpenSSL.
 *
 * Why it exists: in Python every cell an end originates or recognizes
 * replaces three keys, and the only way to key AES through the
 * `cryptography` package is a new cipher object per key (about 6.5 us a
 * cell, most of an end's CGO cost).  Here each direction holds three
 * OpenSSL cipher contexts for its life and re-keys them in place, so the
 * update costs a few key schedules and the old schedule is overwritten,
 * not left to the allocator.  The construction, the primitives and the
 * bytes are exactly cgo.py's pure-Python _Direction (the same vectors in
 * meshvpn/onion/test/test_cgo.py check both); cgo.py falls back to that one
 * when this module was not built.
 *
 *   UH(KU, V, x) = AES-128-GCM(KU) tag of (nonce V, AAD x, no plaintext)
 *   ET: Y = UH ^ AES_KB(X ^ UH)          PRF(KS, T) = AES-128-GCM(KS) keystream, nonce T
 *   UPDATE: KB | KU | KS | N = PRF(KS, N | 0x01) over 64 zero bytes
 *
 * The PRF takes only J0 from OpenSSL's GCM (its GHASH of the nonce) and runs the counter mode
 * itself (prf): GCM would also hash the output, and encrypt J0, for a tag the PRF never uses.
 *
 * Runs cross into C in one call, not a call per cell: a relay's run straight from the link's
 * cells (runEnd, passCells, forwardCells), the ends' runs (originateRun, originateData,
 * unwrapRun).  Each has its Python reference in cgo.py (meshvpn/onion/test/test_cgoruns.py).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>
#include <openssl/evp.h>
#include <openssl/crypto.h>
#include <openssl/modes.h>

#define BLOCK 16
#define CELL_LEN 509
#define BODY_LEN 493
#define SEED_LEN 64

/* An AES-128 key as GCM's block function sees it: an ECB context (AES-NI through EVP). */
typedef struct {
    EVP_CIPHER_CTX *ecb;
    int failed;
    unsigned char j0[16]; /* KS only: the PRF's J0, as GCM derived it from the nonce (prfBlock) */
    int keepJ0;           /* KS only: set while GCM derives it */
} BlockKey;

typedef struct {
    PyObject_HEAD
    EVP_CIPHER_CTX *kb; /* AES-128-ECB, encrypting (relay) or decrypting (client) */
    BlockKey ku, ks;    /* AES-128 under KU (the universal hash) and KS (the PRF, the update) */
    GCM128_CONTEXT *gu, *gs; /* GCM over them: OpenSSL's GHASH without EVP's per-call parameter queries */
    unsigned char nonce[BLOCK];
    unsigned char tprime[BLOCK];
    int decrypting;
} Direction;

static PyTypeObject DirectionType;

/* A recognized or sealed relay payload whose data length field is over the CGO bound (a protocol error). */
static PyObject *RelayLengthError;

static int
failed(const char *what)
{
    PyErr_Format(PyExc_RuntimeError, "CGO: OpenSSL %s failed", what);
    return -1;
}

static void
aesBlock(const unsigned char in[16], unsigned char out[16], const void *key)
{
    BlockKey *k = (BlockKey *)key;
    int outl;
    if (EVP_EncryptUpdate(k->ecb, out, &outl, in, BLOCK) != 1 || outl != BLOCK)
        k->failed = 1;
}

/*
 * GCM's block function for KS.  At re-key it is AES (GCM's hash key H = AES_KS(0)); in the
 * PRF's setiv (keepJ0 set) the one block GCM encrypts is J0, for the tag (EK0 = AES_KS(J0)),
 * which the PRF never makes: that block is kept instead of encrypted, and is where the
 * keystream starts (prf).
 */
static void
prfBlock(const unsigned char in[16], unsigned char out[16], const void *key)
{
    BlockKey *k = (BlockKey *)key;
    if (k->keepJ0) {
        memcpy(k->j0, in, BLOCK);
        memset(out, 0, BLOCK);
    } else
        aesBlock(in, out, key);
}

#define CTR_RUN 32 /* counter blocks encrypted per EVP call */

/*
 * The wipe of the keystream after every PRF: glibc's explicit_bzero is a memset the compiler
 * may not drop, several times faster on a few hundred bytes than OPENSSL_cleanse, which
 * stores a word at a time.
 */
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 25))
#define wipeKeystream explicit_bzero
#else
#define wipeKeystream OPENSSL_cleanse
#endif

/*
 * in ^ the keystream GCM encrypts a message with under k, len bytes into out: AES_K of
 * inc32(J0), inc32^2(J0), ..., where the last word of J0 is a 32-bit big-endian counter that
 * wraps without carrying into the other 96 bits.  GCM would also hash the output (for the
 * tag), which the PRF never uses.
 */
static void
ctrXor(BlockKey *k, const unsigned char j0[BLOCK], const unsigned char *in, unsigned char *out, size_t len)
{
    unsigned char ctrs[CTR_RUN * BLOCK], ks[CTR_RUN * BLOCK];
    uint32_t c = ((uint32_t)j0[12] << 24) | ((uint32_t)j0[13] << 16) | ((uint32_t)j0[14] << 8) | j0[15];
    size_t used = 0;
    while (len) {
        size_t bytes = len < sizeof ks ? len : sizeof ks, n = (bytes + BLOCK - 1) / BLOCK, i;
        int outl;
        for (i = 0; i < n; i++) {
            unsigned char *b = ctrs + i * BLOCK;
            c++;
            memcpy(b, j0, 12);
            b[12] = (unsigned char)(c >> 24);
            b[13] = (unsigned char)(c >> 16);
            b[14] = (unsigned char)(c >> 8);
            b[15] = (unsigned char)c;
        }
        if (EVP_EncryptUpdate(k->ecb, ks, &outl, ctrs, (int)(n * BLOCK)) != 1 || outl != (int)(n * BLOCK))
            k->failed = 1;
        for (i = 0; i < bytes; i++)
            out[i] = in[i] ^ ks[i];
        if (n * BLOCK > used)
            used = n * BLOCK;
        in += bytes;
        out += bytes;
        len -= bytes;
    }
    wipeKeystream(ks, used);
}

/*
 * The keystream of KS for nonce iv (16 or 17 bytes) XORed into in: GCM's encryption without
 * its tag.  GCM turns a nonce that is not 96 bits into J0 through GHASH; setiv does that (and
 * shows J0 to prfBlock), and the keystream is counter mode from there (ctrXor).
 */
static int
prf(Direction *d, const unsigned char *iv, int ivlen, const unsigned char *in, int len, unsigned char *out)
{
    d->ks.keepJ0 = 1;
    CRYPTO_gcm128_setiv(d->gs, iv, ivlen);
    d->ks.keepJ0 = 0;
    ctrXor(&d->ks, d->ks.j0, in, out, (size_t)len);
    return d->ks.failed ? failed("PRF") : 0;
}

/* UH(KU, T' | cmd, x) into m: GCM's tag with no plaintext. */
static int
uh(Direction *d, unsigned char cmd, const unsigned char *x, unsigned char *m)
{
    unsigned char v[BLOCK + 1];
    memcpy(v, d->tprime, BLOCK);
    v[BLOCK] = cmd;
    CRYPTO_gcm128_setiv(d->gu, v, BLOCK + 1);
    if (CRYPTO_gcm128_aad(d->gu, x, BODY_LEN) != 0)
        return failed("UH");
    CRYPTO_gcm128_tag(d->gu, m, BLOCK);
    return d->ku.failed ? failed("UH") : 0;
}

/* Y = m ^ AES_KB(X ^ m) (or AES_KB^-1 when decrypting), into y. */
static int
et(Direction *d, const unsigned char *x, const unsigned char *m, unsigned char *y)
{
    unsigned char b[BLOCK];
    int outl, i;
    for (i = 0; i < BLOCK; i++)
        b[i] = x[i] ^ m[i];
    if (EVP_CipherUpdate(d->kb, y, &outl, b, BLOCK) != 1 || outl != BLOCK) {
        OPENSSL_cleanse(b, BLOCK);
        return failed("AES block");
    }
    for (i = 0; i < BLOCK; i++)
        y[i] ^= m[i];
    OPENSSL_cleanse(b, BLOCK);
    return 0;
}

static int
rekey(Direction *d, const unsigned char *seed)
{
    if (EVP_CipherInit_ex(d->kb, NULL, NULL, seed, NULL, d->decrypting ? 0 : 1) != 1
        || EVP_EncryptInit_ex(d->ku.ecb, NULL, NULL, seed + BLOCK, NULL) != 1
        || EVP_EncryptInit_ex(d->ks.ecb, NULL, NULL, seed + 2 * BLOCK, NULL) != 1)
        return failed("key schedule");
    /* Re-initialized in place: the hash key H and its tables are overwritten. */
    CRYPTO_gcm128_init(d->gu, &d->ku, aesBlock);
    CRYPTO_gcm128_init(d->gs, &d->ks, prfBlock);
    if (d->ku.failed || d->ks.failed)
        return failed("key schedule");
    memcpy(d->nonce, seed + 3 * BLOCK, BLOCK);
    return 0;
}

static int
Direction_init(Direction *d, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"seed", "decrypting", NULL};
    Py_buffer seed;
    int decrypting, rc = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*p", kwlist, &seed, &decrypting))
        return -1;
    if (seed.len != SEED_LEN) {
        PyErr_Format(PyExc_ValueError, "CGO seed of %zd bytes, expected %d", seed.len, SEED_LEN);
        goto done;
    }
    if (d->kb == NULL) {
        d->kb = EVP_CIPHER_CTX_new();
        d->ku.ecb = EVP_CIPHER_CTX_new();
        d->ks.ecb = EVP_CIPHER_CTX_new();
        if (d->kb == NULL || d->ku.ecb == NULL || d->ks.ecb == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        /* Decrypting, ECB would hold the last block back for its padding: off.  Encrypting
           whole blocks it never pads, and leaving it on spares a parameter look-up at every
           re-key (OpenSSL 3.0 re-applies "no padding" on each key). */
        if (EVP_CipherInit_ex(d->kb, EVP_aes_128_ecb(), NULL, NULL, NULL, decrypting ? 0 : 1) != 1
            || (decrypting && EVP_CIPHER_CTX_set_padding(d->kb, 0) != 1)
            || EVP_EncryptInit_ex(d->ku.ecb, EVP_aes_128_ecb(), NULL, NULL, NULL) != 1
            || EVP_EncryptInit_ex(d->ks.ecb, EVP_aes_128_ecb(), NULL, NULL, NULL) != 1) {
            failed("cipher setup");
            goto done;
        }
        /* Keyed by rekey below (CRYPTO_gcm128_init in place); new() needs a key to point at. */
        if (EVP_EncryptInit_ex(d->ku.ecb, NULL, NULL, seed.buf, NULL) != 1
            || EVP_EncryptInit_ex(d->ks.ecb, NULL, NULL, seed.buf, NULL) != 1) {
            failed("cipher setup");
            goto done;
        }
        d->gu = CRYPTO_gcm128_new(&d->ku, aesBlock);
        d->gs = CRYPTO_gcm128_new(&d->ks, prfBlock);
        if (d->gu == NULL || d->gs == NULL) {
            PyErr_NoMemory();
            goto done;
        }
    } else if (decrypting != d->decrypting) {
        PyErr_SetString(PyExc_TypeError, "a direction cannot change sides");
        goto done;
    }
    d->decrypting = decrypting;
    d->ku.failed = d->ks.failed = 0;
    if (rekey(d, seed.buf) < 0)
        goto done;
    memset(d->tprime, 0, BLOCK);
    rc = 0;
done:
    PyBuffer_Release(&seed);
    return rc;
}

static void
Direction_dealloc(Direction *d)
{
    /* EVP_CIPHER_CTX_free and CRYPTO_gcm128_release clear the key schedules; the nonce and T' too. */
    EVP_CIPHER_CTX_free(d->kb);
    EVP_CIPHER_CTX_free(d->ku.ecb);
    EVP_CIPHER_CTX_free(d->ks.ecb);
    if (d->gu != NULL)
        CRYPTO_gcm128_release(d->gu); /* cleared before it is freed */
    if (d->gs != NULL)
        CRYPTO_gcm128_release(d->gs);
    OPENSSL_cleanse(d->nonce, BLOCK);
    OPENSSL_cleanse(d->tprime, BLOCK);
    OPENSSL_cleanse(d->ks.j0, BLOCK);
    Py_TYPE(d)->tp_free((PyObject *)d);
}

/* The cell command argument: one byte (RELAY or RELAY_EARLY). */
static int
parseCmd(PyObject *arg, unsigned char *cmd)
{
    Py_buffer c;
    int ok;
    if (PyObject_GetBuffer(arg, &c, PyBUF_SIMPLE) < 0)
        return -1;
    ok = c.len == 1;
    if (ok)
        *cmd = ((unsigned char *)c.buf)[0];
    PyBuffer_Release(&c);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "CGO cell command must be one byte");
        return -1;
    }
    return 0;
}

static int
parseCell(PyObject *const *args, Py_ssize_t nargs, unsigned char *cmd, Py_buffer *cell)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "expected (cmd, cell)");
        return -1;
    }
    if (parseCmd(args[0], cmd) < 0)
        return -1;
    if (PyObject_GetBuffer(args[1], cell, PyBUF_SIMPLE) < 0)
        return -1;
    if (cell->len != CELL_LEN) {
        PyErr_Format(PyExc_ValueError, "CGO cell of %zd bytes, expected %d", cell->len, CELL_LEN);
        PyBuffer_Release(cell);
        return -1;
    }
    return 0;
}

/* The layer on one cell, in -> o (CELL_LEN each, distinct): ENC_UIV for a relay, DEC_UIV for the client. */
static int
layer(Direction *d, unsigned char cmd, const unsigned char *in, unsigned char *o)
{
    unsigned char m[BLOCK];
    int rc = -1;
    if (d->decrypting) {
        if (prf(d, in, BLOCK, in + BLOCK, BODY_LEN, o + BLOCK) == 0 && uh(d, cmd, o + BLOCK, m) == 0
            && et(d, in, m, o) == 0) {
            memcpy(d->tprime, in, BLOCK);
            rc = 0;
        }
    } else {
        if (uh(d, cmd, in + BLOCK, m) == 0 && et(d, in, m, o) == 0
            && prf(d, o, BLOCK, in + BLOCK, BODY_LEN, o + BLOCK) == 0) {
            memcpy(d->tprime, o, BLOCK);
            rc = 0;
        }
    }
    /* m is the hash of the plaintext under KU: wiped on every return. */
    OPENSSL_cleanse(m, BLOCK);
    return rc;
}

static int
updateWith(Direction *d, const unsigned char *nonce)
{
    static const unsigned char zeros[SEED_LEN];
    unsigned char iv[BLOCK + 1], seed[SEED_LEN];
    int rc;
    memcpy(iv, nonce, BLOCK);
    iv[BLOCK] = 0x01;
    rc = prf(d, iv, BLOCK + 1, zeros, SEED_LEN, seed);
    if (rc == 0)
        rc = rekey(d, seed);
    OPENSSL_cleanse(seed, SEED_LEN);
    OPENSSL_cleanse(iv, BLOCK + 1);
    return rc;
}

static PyObject *
plainLayer(Direction *d, PyObject *const *args, Py_ssize_t nargs, int decrypting)
{
    unsigned char cmd;
    Py_buffer cell;
    PyObject *out;
    if (decrypting != d->decrypting) {
        PyErr_SetString(PyExc_TypeError, decrypting ? "this direction encrypts (a relay's)"
                                                    : "this direction decrypts (the client's)");
        return NULL;
    }
    if (parseCell(args, nargs, &cmd, &cell) < 0)
        return NULL;
    out = PyBytes_FromStringAndSize(NULL, CELL_LEN);
    if (out != NULL && layer(d, cmd, cell.buf, (unsigned char *)PyBytes_AS_STRING(out)) < 0)
        Py_CLEAR(out);
    PyBuffer_Release(&cell);
    return out;
}

/* ENC_UIV with H = T' | cmd (a relay's layer); T' becomes the output's T. */
static PyObject *
Direction_encrypt(Direction *d, PyObject *const *args, Py_ssize_t nargs)
{
    return plainLayer(d, args, nargs, 0);
}

/* DEC_UIV with H = T' | cmd (the client); T' becomes the input's T. */
static PyObject *
Direction_decrypt(Direction *d, PyObject *const *args, Py_ssize_t nargs)
{
    return plainLayer(d, args, nargs, 1);
}

/* UPDATE_UIV with a 16-byte nonce: new keys and N; the old schedules are overwritten. */
static PyObject *
Direction_update(Direction *d, PyObject *arg)
{
    unsigned char nonce[BLOCK];
    Py_buffer n;
    if (PyObject_GetBuffer(arg, &n, PyBUF_SIMPLE) < 0)
        return NULL;
    if (n.len != BLOCK) {
        PyBuffer_Release(&n);
        PyErr_SetString(PyExc_ValueError, "CGO update nonce must be 16 bytes");
        return NULL;
    }
    memcpy(nonce, n.buf, BLOCK);
    PyBuffer_Release(&n);
    if (updateWith(d, nonce) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* The layer, then recognition (T = N, constant time) and, on a match, the update. */
static int
layerRecognize(Direction *d, unsigned char cmd, const unsigned char *in, unsigned char *o, int *mine)
{
    unsigned char inTag[BLOCK];
    memcpy(inTag, in, BLOCK);
    if (layer(d, cmd, in, o) < 0)
        return -1;
    *mine = CRYPTO_memcmp(o, d->nonce, BLOCK) == 0;
    /* The client updates with the T it received, a relay with its output T (= N). */
    if (*mine && updateWith(d, d->decrypting ? inTag : o) < 0)
        return -1;
    return 0;
}

static PyObject *
pairOf(PyObject *cell, const unsigned char *tag)
{
    PyObject *t, *pair;
    if (tag == NULL) {
        t = Py_None;
        Py_INCREF(t);
    } else if ((t = PyBytes_FromStringAndSize((const char *)tag, BLOCK)) == NULL) {
        Py_DECREF(cell);
        return NULL;
    }
    pair = PyTuple_Pack(2, cell, t);
    Py_DECREF(cell);
    Py_DECREF(t);
    return pair;
}

/* layer(cmd, cell) -> (out, tag or None): a cell passing this layer; tag (the T it arrived with) when it is for this end. */
static PyObject *
Direction_layer(Direction *d, PyObject *const *args, Py_ssize_t nargs)
{
    unsigned char cmd, inTag[BLOCK];
    Py_buffer cell;
    PyObject *out;
    int mine;
    if (parseCell(args, nargs, &cmd, &cell) < 0)
        return NULL;
    memcpy(inTag, cell.buf, BLOCK);
    out = PyBytes_FromStringAndSize(NULL, CELL_LEN);
    if (out == NULL || layerRecognize(d, cmd, cell.buf, (unsigned char *)PyBytes_AS_STRING(out), &mine) < 0) {
        Py_XDECREF(out);
        PyBuffer_Release(&cell);
        return NULL;
    }
    PyBuffer_Release(&cell);
    return pairOf(out, mine ? inTag : NULL);
}

/* originate(cmd, body) -> (cell, tag): a 493-byte body this end sends (T = N), the layer, the update. */
static PyObject *
Direction_originate(Direction *d, PyObject *const *args, Py_ssize_t nargs)
{
    unsigned char cmd, in[CELL_LEN], nonce[BLOCK], *o;
    Py_buffer body;
    PyObject *out, *result = NULL;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "expected (cmd, body)");
        return NULL;
    }
    if (parseCmd(args[0], &cmd) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[1], &body, PyBUF_SIMPLE) < 0)
        return NULL;
    if (body.len != BODY_LEN) {
        PyErr_Format(PyExc_ValueError, "CGO body of %zd bytes, expected %d", body.len, BODY_LEN);
        PyBuffer_Release(&body);
        return NULL;
    }
    memcpy(in, d->nonce, BLOCK);
    memcpy(in + BLOCK, body.buf, BODY_LEN);
    PyBuffer_Release(&body);
    memcpy(nonce, d->nonce, BLOCK);
    out = PyBytes_FromStringAndSize(NULL, CELL_LEN);
    if (out == NULL)
        goto done;
    o = (unsigned char *)PyBytes_AS_STRING(out);
    /* The client (sealing for a hop) updates with N, a relay with its output T. */
    if (layer(d, cmd, in, o) < 0 || updateWith(d, d->decrypting ? nonce : o) < 0) {
        Py_DECREF(out);
        goto done;
    }
    result = pairOf(out, o);
done:
    /* As sealRun: the plaintext cell and N do not stay on the stack. */
    OPENSSL_cleanse(in, CELL_LEN);
    OPENSSL_cleanse(nonce, BLOCK);
    return result;
}

/* The cell sealed from `in` (T = N | body) at index i of cells and tags: head + the layer, the update. */
static int
sealInto(Direction *d, unsigned char cmd, unsigned char in[CELL_LEN], const Py_buffer *head, PyObject *cells,
         PyObject *tags, Py_ssize_t i)
{
    unsigned char nonce[BLOCK], *o;
    PyObject *out, *tag;
    int rc = -1;
    memcpy(nonce, d->nonce, BLOCK);
    out = PyBytes_FromStringAndSize(NULL, head->len + CELL_LEN);
    if (out == NULL)
        goto done;
    PyList_SET_ITEM(cells, i, out);
    o = (unsigned char *)PyBytes_AS_STRING(out);
    memcpy(o, head->buf, head->len);
    o += head->len;
    if (layer(d, cmd, in, o) < 0 || updateWith(d, d->decrypting ? nonce : o) < 0)
        goto done;
    tag = PyBytes_FromStringAndSize((const char *)o, BLOCK);
    if (tag == NULL)
        goto done;
    PyList_SET_ITEM(tags, i, tag);
    rc = 0;
done:
    /* N keyed this cell's recognition; it is not left on the stack. */
    OPENSSL_cleanse(nonce, BLOCK);
    return rc;
}

/*
 * How one item of an end's run becomes the body it seals (BODY_LEN bytes): originateRun's bodies
 * or payloads, originateData's chunks.  Items were checked before any is sealed; fill refuses an
 * item that changed since (it returns -1 with an exception set), and may have written part of body.
 */
typedef struct Filler Filler;
struct Filler {
    int (*fill)(const Filler *f, PyObject *item, unsigned char body[BODY_LEN]);
    Py_ssize_t at, itemLen;          /* originateRun: where the body starts in an item, its size */
    long relayCmd, streamId;         /* originateData: the relay header each chunk is sealed under */
    Py_ssize_t maxData;
};

/*
 * The one sealing loop of the ends' runs: T = N | fill(item), sealed in order.  Its one exit wipes
 * the plaintext cell, on success and on every error, so no run leaves a body on the stack.
 */
static PyObject *
sealRun(Direction *d, unsigned char cmd, PyObject *seq, const Py_buffer *head, const Filler *f)
{
    unsigned char in[CELL_LEN];
    PyObject *cells, *tags, *result = NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), i;
    cells = PyList_New(n);
    tags = PyList_New(n);
    if (cells == NULL || tags == NULL)
        goto done;
    for (i = 0; i < n; i++) {
        memcpy(in, d->nonce, BLOCK);
        if (f->fill(f, PySequence_Fast_GET_ITEM(seq, i), in + BLOCK) < 0
            || sealInto(d, cmd, in, head, cells, tags, i) < 0)
            goto done;
    }
    result = PyTuple_Pack(2, cells, tags);
done:
    OPENSSL_cleanse(in, CELL_LEN);
    Py_XDECREF(cells);
    Py_XDECREF(tags);
    return result;
}

/*
 * originateRun(cmd, bodies, head[, at, maxData]) -> ([head + cell, ...], [tag, ...]): originate for
 * several bodies in order.  With `at`, each item is a common-layout relay payload (PAYLOAD_LEN
 * bytes) whose body starts at byte `at`; its data length (bytes 3-4 of the body) must be at most
 * maxData.  Every item is checked before any is sealed, so a bad one leaves the keys as they were.
 */
#define PAYLOAD_LEN 509
#define LEN_AT 3

static int
fillBody(const Filler *f, PyObject *item, unsigned char body[BODY_LEN])
{
    Py_buffer b;
    if (PyObject_GetBuffer(item, &b, PyBUF_SIMPLE) < 0)
        return -1;
    if (b.len != f->itemLen) { /* changed under us (a bytearray resized by another thread) */
        PyErr_SetString(PyExc_ValueError, "a body changed size while it was sealed");
        PyBuffer_Release(&b);
        return -1;
    }
    memcpy(body, (unsigned char *)b.buf + (f->at < 0 ? 0 : f->at), BODY_LEN);
    PyBuffer_Release(&b);
    return 0;
}

static PyObject *
Direction_originateRun(Direction *d, PyObject *const *args, Py_ssize_t nargs)
{
    unsigned char cmd;
    Py_buffer head, body;
    PyObject *seq = NULL, *result = NULL;
    Py_ssize_t n, i, maxData = 0;
    Filler f = {fillBody, -1, BODY_LEN, 0, 0, 0};
    if (nargs != 3 && nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "expected (cmd, bodies, head[, at, maxData])");
        return NULL;
    }
    if (nargs == 5) {
        f.at = PyLong_AsSsize_t(args[3]);
        maxData = PyLong_AsSsize_t(args[4]);
        if ((f.at == -1 || maxData == -1) && PyErr_Occurred())
            return NULL;
        if (f.at < 0 || f.at + BODY_LEN > PAYLOAD_LEN) {
            PyErr_SetString(PyExc_ValueError, "body offset outside the relay payload");
            return NULL;
        }
        f.itemLen = PAYLOAD_LEN;
    }
    if (parseCmd(args[0], &cmd) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[2], &head, PyBUF_SIMPLE) < 0)
        return NULL;
    seq = PySequence_Fast(args[1], "bodies must be a sequence");
    if (seq == NULL)
        goto done;
    n = PySequence_Fast_GET_SIZE(seq);
    for (i = 0; i < n; i++) {
        const unsigned char *b;
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, i), &body, PyBUF_SIMPLE) < 0)
            goto done;
        b = body.buf;
        if (body.len != f.itemLen) {
            PyErr_Format(PyExc_ValueError, f.at < 0 ? "CGO body of %zd bytes, expected %zd"
                                                    : "relay payload of %zd bytes, expected %zd", body.len, f.itemLen);
            PyBuffer_Release(&body);
            goto done;
        }
        if (f.at >= 0 && ((Py_ssize_t)b[f.at + LEN_AT] << 8 | b[f.at + LEN_AT + 1]) > maxData) {
            PyErr_Format(RelayLengthError, "relay data over %zd bytes on a CGO hop", maxData);
            PyBuffer_Release(&body);
            goto done;
        }
        PyBuffer_Release(&body);
    }
    result = sealRun(d, cmd, seq, &head, &f);
done:
    Py_XDECREF(seq);
    PyBuffer_Release(&head);
    return result;
}

/*
 * originateData(cmd, relayCmd, streamId, chunks, maxData, head) -> ([head + cell, ...], [tag, ...]):
 * one relay message per chunk (at most maxData bytes each), sealed as originateRun seals bodies;
 * the body is relayCmd 1 | streamId 2 | length 2 | chunk | zeros (the common relay layout from
 * its command on).  Every chunk is checked before any is sealed.
 */
static int
fillData(const Filler *f, PyObject *item, unsigned char b[BODY_LEN])
{
    Py_buffer chunk;
    if (PyObject_GetBuffer(item, &chunk, PyBUF_SIMPLE) < 0)
        return -1;
    if (chunk.len > f->maxData) { /* changed under us */
        PyErr_SetString(PyExc_ValueError, "a chunk changed size while it was sealed");
        PyBuffer_Release(&chunk);
        return -1;
    }
    b[0] = (unsigned char)f->relayCmd;
    b[1] = (unsigned char)(f->streamId >> 8);
    b[2] = (unsigned char)f->streamId;
    b[LEN_AT] = (unsigned char)(chunk.len >> 8);
    b[LEN_AT + 1] = (unsigned char)chunk.len;
    memcpy(b + LEN_AT + 2, chunk.buf, chunk.len);
    memset(b + LEN_AT + 2 + chunk.len, 0, BODY_LEN - LEN_AT - 2 - chunk.len);
    PyBuffer_Release(&chunk);
    return 0;
}

static PyObject *
Direction_originateData(Direction *d, PyObject *const *args, Py_ssize_t nargs)
{
    unsigned char cmd;
    Py_buffer head, chunk;
    PyObject *seq = NULL, *result = NULL;
    Py_ssize_t n, i;
    Filler f = {fillData, -1, 0, 0, 0, 0};
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "expected (cmd, relayCmd, streamId, chunks, maxData, head)");
        return NULL;
    }
    if (parseCmd(args[0], &cmd) < 0)
        return NULL;
    f.relayCmd = PyLong_AsLong(args[1]);
    f.streamId = PyLong_AsLong(args[2]);
    f.maxData = PyLong_AsSsize_t(args[4]);
    if (PyErr_Occurred())
        return NULL;
    if (f.relayCmd < 0 || f.relayCmd > 0xff || f.streamId < 0 || f.streamId > 0xffff || f.maxData < 0
        || f.maxData > BODY_LEN - LEN_AT - 2) {
        PyErr_SetString(PyExc_ValueError, "relay command, stream id or data bound out of range");
        return NULL;
    }
    if (PyObject_GetBuffer(args[5], &head, PyBUF_SIMPLE) < 0)
        return NULL;
    seq = PySequence_Fast(args[3], "chunks must be a sequence");
    if (seq == NULL)
        goto done;
    n = PySequence_Fast_GET_SIZE(seq);
    for (i = 0; i < n; i++) {
        Py_ssize_t len;
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, i), &chunk, PyBUF_SIMPLE) < 0)
            goto done;
        len = chunk.len;
        PyBuffer_Release(&chunk);
        if (len > f.maxData) {
            PyErr_Format(RelayLengthError, "relay data over %zd bytes on a CGO hop", f.maxData);
            goto done;
        }
    }
    result = sealRun(d, cmd, seq, &head, &f);
done:
    Py_XDECREF(seq);
    PyBuffer_Release(&head);
    return result;
}

/* passRun(cmd, payloads, head) -> [head + layer(payload), ...]: cells passing through, none for this end. */
static PyObject *
Direction_passRun(Direction *d, PyObject *const *args, Py_ssize_t nargs)
{
    unsigned char cmd;
    Py_buffer head, cell;
    PyObject *seq, *list = NULL;
    Py_ssize_t n, i;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "expected (cmd, payloads, head)");
        return NULL;
    }
    if (parseCmd(args[0], &cmd) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[2], &head, PyBUF_SIMPLE) < 0)
        return NULL;
    seq = PySequence_Fast(args[1], "payloads must be a sequence");
    if (seq == NULL)
        goto done;
    n = PySequence_Fast_GET_SIZE(seq);
    list = PyList_New(n);
    if (list == NULL)
        goto done;
    for (i = 0; i < n; i++) {
        PyObject *out;
        unsigned char *o;
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, i), &cell, PyBUF_SIMPLE) < 0)
            goto fail;
        if (cell.len != CELL_LEN) {
            PyErr_Format(PyExc_ValueError, "CGO cell of %zd bytes, expected %d", cell.len, CELL_LEN);
            PyBuffer_Release(&cell);
            goto fail;
        }
        out = PyBytes_FromStringAndSize(NULL, head.len + CELL_LEN);
        if (out == NULL) {
            PyBuffer_Release(&cell);
            goto fail;
        }
        o = (unsigned char *)PyBytes_AS_STRING(out);
        memcpy(o, head.buf, head.len);
        PyList_SET_ITEM(list, i, out);
        if (layer(d, cmd, cell.buf, o + head.len) < 0) {
            PyBuffer_Release(&cell);
            goto fail;
        }
        PyBuffer_Release(&cell);
    }
    goto done;
fail:
    Py_CLEAR(list);
done:
    Py_XDECREF(seq);
    PyBuffer_Release(&head);
    return list;
}

/*
 * The link side of a relay's hot path: cells as the link hands them over, each a whole
 * LINK_CELL-byte cell (circuit id 4 | command 1 | payload 509), one Python object each.
 * A run is the cells from `start` on that have the first one's circuit id and command and the
 * right size; the channel finds it (runEnd) and gives it to its circuit's end, which puts the
 * run through its layer straight from the link's cells (passCells, forwardCells): no slice per
 * cell, and the output cells already carry the next link's circuit id and command.
 */
#define LINK_CELL (5 + CELL_LEN)
#define LINK_HEAD 5

/* cells[i] as a buffer when it is a whole link cell, else buf->buf == NULL (no error set). */
static int
linkCell(PyObject *seq, Py_ssize_t i, Py_buffer *buf)
{
    if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, i), buf, PyBUF_SIMPLE) < 0)
        return -1;
    if (buf->len != LINK_CELL) {
        PyBuffer_Release(buf);
        buf->buf = NULL;
    }
    return 0;
}

/* runEnd(cells, start) -> stop: cells[start:stop] are whole cells with cells[start]'s first 5 bytes. */
static PyObject *
runEnd(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    unsigned char head[LINK_HEAD];
    PyObject *seq;
    Py_ssize_t start, n, j;
    Py_buffer c;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "expected (cells, start)");
        return NULL;
    }
    start = PyLong_AsSsize_t(args[1]);
    if (start == -1 && PyErr_Occurred())
        return NULL;
    seq = PySequence_Fast(args[0], "cells must be a sequence");
    if (seq == NULL)
        return NULL;
    n = PySequence_Fast_GET_SIZE(seq);
    if (start < 0 || start >= n) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_IndexError, "run start outside the cells");
        return NULL;
    }
    if (linkCell(seq, start, &c) < 0)
        goto fail;
    if (c.buf == NULL) {
        PyErr_Format(PyExc_ValueError, "a run starts with a whole %d-byte cell", LINK_CELL);
        goto fail;
    }
    memcpy(head, c.buf, LINK_HEAD);
    PyBuffer_Release(&c);
    for (j = start + 1; j < n; j++) {
        int same;
        if (linkCell(seq, j, &c) < 0)
            goto fail;
        if (c.buf == NULL)
            break;
        same = memcmp(c.buf, head, LINK_HEAD) == 0;
        PyBuffer_Release(&c);
        if (!same)
            break;
    }
    Py_DECREF(seq);
    return PyLong_FromSsize_t(j);
fail:
    Py_DECREF(seq);
    return NULL;
}

/* The run arguments (cmd, cells, start, stop, head) shared by passCells and forwardCells. */
static int
parseRun(PyObject *const *args, Py_ssize_t nargs, unsigned char *cmd, PyObject **seq, Py_ssize_t *start,
         Py_ssize_t *stop, Py_buffer *head)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "expected (cmd, cells, start, stop, head)");
        return -1;
    }
    if (parseCmd(args[0], cmd) < 0)
        return -1;
    *start = PyLong_AsSsize_t(args[2]);
    *stop = PyLong_AsSsize_t(args[3]);
    if ((*start == -1 || *stop == -1) && PyErr_Occurred())
        return -1;
    *seq = PySequence_Fast(args[1], "cells must be a sequence");
    if (*seq == NULL)
        return -1;
    if (*start < 0 || *stop < *start || *stop > PySequence_Fast_GET_SIZE(*seq)) {
        PyErr_SetString(PyExc_IndexError, "run outside the cells");
        Py_CLEAR(*seq);
        return -1;
    }
    if (PyObject_GetBuffer(args[4], head, PyBUF_SIMPLE) < 0) {
        Py_CLEAR(*seq);
        return -1;
    }
    return 0;
}

static int
runCell(PyObject *seq, Py_ssize_t i, Py_buffer *c)
{
    if (linkCell(seq, i, c) < 0)
        return -1;
    if (c->buf == NULL) {
        PyErr_Format(PyExc_ValueError, "a run holds whole %d-byte cells only", LINK_CELL);
        return -1;
    }
    return 0;
}

/* passCells(cmd, cells, start, stop, head) -> [head + layer(cell[5:]) for cell in cells[start:stop]]. */
static PyObject *
Direction_passCells(Direction *d, PyObject *const *args, Py_ssize_t nargs)
{
    unsigned char cmd;
    Py_buffer head, c;
    PyObject *seq, *list = NULL;
    Py_ssize_t start, stop, i;
    if (parseRun(args, nargs, &cmd, &seq, &start, &stop, &head) < 0)
        return NULL;
    list = PyList_New(stop - start);
    if (list == NULL)
        goto done;
    for (i = start; i < stop; i++) {
        PyObject *out;
        unsigned char *o;
        if (runCell(seq, i, &c) < 0)
            goto fail;
        out = PyBytes_FromStringAndSize(NULL, head.len + CELL_LEN);
        if (out == NULL) {
            PyBuffer_Release(&c);
            goto fail;
        }
        PyList_SET_ITEM(list, i - start, out);
        o = (unsigned char *)PyBytes_AS_STRING(out);
        memcpy(o, head.buf, head.len);
        if (layer(d, cmd, (unsigned char *)c.buf + LINK_HEAD, o + head.len) < 0) {
            PyBuffer_Release(&c);
            goto fail;
        }
        PyBuffer_Release(&c);
    }
    goto done;
fail:
    Py_CLEAR(list);
done:
    Py_DECREF(seq);
    PyBuffer_Release(&head);
    return list;
}

/*
 * forwardCells(cmd, cells, start, stop, head) -> (next, [head + out, ...], mine): the layer with
 * recognition on cells[start:stop] in order, up to and including the first cell for this end.
 * The list holds the cells before it, to pass on; mine is None, or (out, tag) for that cell
 * (as layer() returns it); next is the index after the last cell taken.
 */
static PyObject *
Direction_forwardCells(Direction *d, PyObject *const *args, Py_ssize_t nargs)
{
    unsigned char cmd, inTag[BLOCK], o[CELL_LEN];
    Py_buffer head, c;
    PyObject *seq, *list = NULL, *mine = NULL, *result = NULL;
    Py_ssize_t start, stop, i;
    if (parseRun(args, nargs, &cmd, &seq, &start, &stop, &head) < 0)
        return NULL;
    list = PyList_New(0);
    if (list == NULL)
        goto done;
    for (i = start; i < stop && mine == NULL; i++) {
        int ours;
        if (runCell(seq, i, &c) < 0)
            goto done;
        memcpy(inTag, (unsigned char *)c.buf + LINK_HEAD, BLOCK);
        ours = 0;
        if (layerRecognize(d, cmd, (unsigned char *)c.buf + LINK_HEAD, o, &ours) < 0) {
            PyBuffer_Release(&c);
            goto done;
        }
        PyBuffer_Release(&c);
        if (ours) {
            PyObject *out = PyBytes_FromStringAndSize((const char *)o, CELL_LEN);
            if (out == NULL || (mine = pairOf(out, inTag)) == NULL)
                goto done;
        } else {
            PyObject *out = PyBytes_FromStringAndSize(NULL, head.len + CELL_LEN);
            int rc;
            if (out == NULL)
                goto done;
            memcpy(PyBytes_AS_STRING(out), head.buf, head.len);
            memcpy(PyBytes_AS_STRING(out) + head.len, o, CELL_LEN);
            rc = PyList_Append(list, out);
            Py_DECREF(out);
            if (rc < 0)
                goto done;
        }
    }
    result = Py_BuildValue("(nOO)", i, list, mine == NULL ? Py_None : mine);
done:
    OPENSSL_cleanse(o, CELL_LEN);
    Py_XDECREF(list);
    Py_XDECREF(mine);
    Py_DECREF(seq);
    PyBuffer_Release(&head);
    return result;
}

/* unwrapRun's (hop, body, tag) for a recognized cell, built directly rather than by
   Py_BuildValue, which parses its format string for every cell.  Takes body's reference. */
static PyObject *
unwrapEntry(Py_ssize_t hop, PyObject *body, const unsigned char *tag)
{
    PyObject *h = PyLong_FromSsize_t(hop), *t = PyBytes_FromStringAndSize((const char *)tag, BLOCK), *entry;
    if (h != NULL && t != NULL && (entry = PyTuple_New(3)) != NULL) {
        PyTuple_SET_ITEM(entry, 0, h);
        PyTuple_SET_ITEM(entry, 1, body);
        PyTuple_SET_ITEM(entry, 2, t);
        return entry;
    }
    Py_XDECREF(h);
    Py_XDECREF(t);
    Py_DECREF(body);
    return NULL;
}

/*
 * unwrapRun(cmd, payloads, directions, pad) -> [(index, pad + body, tag), ...]: the client's
 * backward layers (guard first) on each cell until one recognizes it; a cell none recognizes
 * ends the list with None (the chain is broken from there on).  With maxData, a recognized
 * cell whose data length is over it raises RelayLengthError once the whole run is through.
 */
static PyObject *
unwrapRun(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    unsigned char cmd, a[CELL_LEN], b[CELL_LEN], inTag[BLOCK];
    Py_buffer pad, cell;
    PyObject *seq = NULL, *dirs = NULL, *list = NULL;
    Py_ssize_t n, hops, i, h, maxData = -1, tooLong = -1;
    if (nargs != 4 && nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "expected (cmd, payloads, directions, pad[, maxData])");
        return NULL;
    }
    if (nargs == 5 && (maxData = PyLong_AsSsize_t(args[4])) < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "maxData must not be negative");
        return NULL;
    }
    if (parseCmd(args[0], &cmd) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[3], &pad, PyBUF_SIMPLE) < 0)
        return NULL;
    seq = PySequence_Fast(args[1], "payloads must be a sequence");
    dirs = seq == NULL ? NULL : PySequence_Fast(args[2], "directions must be a sequence");
    if (dirs == NULL)
        goto fail;
    hops = PySequence_Fast_GET_SIZE(dirs);
    for (h = 0; h < hops; h++) {
        Direction *d = (Direction *)PySequence_Fast_GET_ITEM(dirs, h);
        if (!PyObject_TypeCheck((PyObject *)d, &DirectionType) || !d->decrypting || d->kb == NULL) {
            PyErr_SetString(PyExc_TypeError, "directions must be the client's CGO directions");
            goto fail;
        }
    }
    n = PySequence_Fast_GET_SIZE(seq);
    list = PyList_New(0);
    if (list == NULL)
        goto fail;
    for (i = 0; i < n; i++) {
        PyObject *entry = NULL;
        unsigned char *in = a, *out = b, *swap;
        int mine = 0;
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, i), &cell, PyBUF_SIMPLE) < 0)
            goto fail;
        if (cell.len != CELL_LEN) {
            PyErr_Format(PyExc_ValueError, "CGO cell of %zd bytes, expected %d", cell.len, CELL_LEN);
            PyBuffer_Release(&cell);
            goto fail;
        }
        memcpy(a, cell.buf, CELL_LEN);
        PyBuffer_Release(&cell);
        for (h = 0; h < hops && !mine; h++) {
            memcpy(inTag, in, BLOCK);
            if (layerRecognize((Direction *)PySequence_Fast_GET_ITEM(dirs, h), cmd, in, out, &mine) < 0)
                goto fail;
            swap = in;
            in = out;
            out = swap;
        }
        if (mine && maxData >= 0 && tooLong < 0
            && ((Py_ssize_t)in[BLOCK + LEN_AT] << 8 | in[BLOCK + LEN_AT + 1]) > maxData)
            tooLong = i;
        if (mine) {
            PyObject *body = PyBytes_FromStringAndSize(NULL, pad.len + BODY_LEN);
            if (body == NULL)
                goto fail;
            memcpy(PyBytes_AS_STRING(body), pad.buf, pad.len);
            memcpy(PyBytes_AS_STRING(body) + pad.len, in + BLOCK, BODY_LEN);
            entry = unwrapEntry(h - 1, body, inTag);
        } else {
            entry = Py_None;
            Py_INCREF(entry);
        }
        if (entry == NULL || PyList_Append(list, entry) < 0) {
            Py_XDECREF(entry);
            goto fail;
        }
        Py_DECREF(entry);
        if (!mine)
            break;
    }
    if (tooLong >= 0) {
        /* Raised once the whole run went through the layers, as a check after the run would be. */
        PyErr_Format(RelayLengthError, "relay length over %zd on a CGO hop", maxData);
        goto fail;
    }
    goto done;
fail:
    Py_CLEAR(list);
done:
    Py_XDECREF(seq);
    Py_XDECREF(dirs);
    PyBuffer_Release(&pad);
    OPENSSL_cleanse(a, CELL_LEN);
    OPENSSL_cleanse(b, CELL_LEN);
    return list;
}

static PyObject *
Direction_getNonce(Direction *d, void *closure)
{
    return PyBytes_FromStringAndSize((const char *)d->nonce, BLOCK);
}

static PyObject *
Direction_getTprime(Direction *d, void *closure)
{
    return PyBytes_FromStringAndSize((const char *)d->tprime, BLOCK);
}

static PyMethodDef Direction_methods[] = {
    {"encrypt", (PyCFunction)(void (*)(void))Direction_encrypt, METH_FASTCALL,
     "encrypt(cmd, cell): ENC_UIV, a relay's layer on a 509-byte cell"},
    {"decrypt", (PyCFunction)(void (*)(void))Direction_decrypt, METH_FASTCALL,
     "decrypt(cmd, cell): DEC_UIV, the client's layer on a 509-byte cell"},
    {"update", (PyCFunction)Direction_update, METH_O, "update(nonce): UPDATE_UIV"},
    {"layer", (PyCFunction)(void (*)(void))Direction_layer, METH_FASTCALL,
     "layer(cmd, cell) -> (out, tag or None): the layer and recognition (then the update)"},
    {"originate", (PyCFunction)(void (*)(void))Direction_originate, METH_FASTCALL,
     "originate(cmd, body) -> (cell, tag): a 493-byte body from this end, the layer, the update"},
    {"originateRun", (PyCFunction)(void (*)(void))Direction_originateRun, METH_FASTCALL,
     "originateRun(cmd, bodies, head) -> ([head + cell], [tag]): originate for several bodies"},
    {"passRun", (PyCFunction)(void (*)(void))Direction_passRun, METH_FASTCALL,
     "passRun(cmd, payloads, head) -> [head + layer(payload)]: cells passing through"},
    {"originateData", (PyCFunction)(void (*)(void))Direction_originateData, METH_FASTCALL,
     "originateData(cmd, relayCmd, streamId, chunks, maxData, head) -> ([head + cell], [tag]): a message per chunk"},
    {"passCells", (PyCFunction)(void (*)(void))Direction_passCells, METH_FASTCALL,
     "passCells(cmd, cells, start, stop, head) -> [head + layer(cell[5:])]: link cells passing through"},
    {"forwardCells", (PyCFunction)(void (*)(void))Direction_forwardCells, METH_FASTCALL,
     "forwardCells(cmd, cells, start, stop, head) -> (next, [head + out], None or (out, tag)): up to the first for this end"},
    {NULL}
};

static PyGetSetDef Direction_getset[] = {
    {"nonce", (getter)Direction_getNonce, NULL, "N: a cell whose T equals it is for this end", NULL},
    {"tprime", (getter)Direction_getTprime, NULL, "T': the chained tag", NULL},
    {NULL}
};

static PyTypeObject DirectionType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "meshvpn.onion._cgodirection.Direction",
    .tp_doc = "Direction(seed, decrypting): one direction of one hop's CGO layer",
    .tp_basicsize = sizeof(Direction),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Direction_init,
    .tp_dealloc = (destructor)Direction_dealloc,
    .tp_methods = Direction_methods,
    .tp_getset = Direction_getset,
};

static PyMethodDef module_methods[] = {
    {"runEnd", (PyCFunction)(void (*)(void))runEnd, METH_FASTCALL,
     "runEnd(cells, start) -> stop: the whole cells from start on with its circuit id and command"},
    {"unwrapRun", (PyCFunction)(void (*)(void))unwrapRun, METH_FASTCALL,
     "unwrapRun(cmd, payloads, directions, pad[, maxData]) -> [(hop, pad + body, tag), ...] (None ends it)"},
    {NULL}
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_cgodirection", "One direction of a CGO layer over OpenSSL (see cgo.py).", -1,
    module_methods,
};

PyMODINIT_FUNC
PyInit__cgodirection(void)
{
    PyObject *m;
    if (PyType_Ready(&DirectionType) < 0)
        return NULL;
    m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&DirectionType);
    if (PyModule_AddObject(m, "Direction", (PyObject *)&DirectionType) < 0) {
        Py_DECREF(&DirectionType);
        Py_DECREF(m);
        return NULL;
    }
    RelayLengthError = PyErr_NewExceptionWithDoc("meshvpn.onion._cgodirection.RelayLengthError",
                                                 "a relay payload's data length is over the CGO bound",
                                                 PyExc_ValueError, NULL);
    if (RelayLengthError == NULL || PyModule_AddObject(m, "RelayLengthError", Py_NewRef(RelayLengthError)) < 0) {
        Py_XDECREF(RelayLengthError);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
