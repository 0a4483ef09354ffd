#include "signature.h"

#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <tvm/ffi/any.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/string.h>

#include <cstdio>
#include <memory>
#include <vector>

#include "penni_runtime.h"

namespace penni {
namespace detail {
namespace {

constexpr const char* kFormat = "penni-deploy-signature-v1";
constexpr const char* kAlgorithm = "ecdsa-p256-sha256";

struct PkeyFree {
  void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};
struct MdCtxFree {
  void operator()(EVP_MD_CTX* ctx) const { EVP_MD_CTX_free(ctx); }
};
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;

std::string Hex(const unsigned char* bytes, size_t n) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < n; ++i) {
    out += digits[bytes[i] >> 4];
    out += digits[bytes[i] & 15];
  }
  return out;
}

std::string ReadFile(const std::string& path) {
  std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(path.c_str(), "rb"), std::fclose);
  if (!file) throw Error("cannot read the trusted key " + path + " (no such file, or not readable)");
  std::string out;
  char buffer[4096];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof(buffer), file.get())) > 0) out.append(buffer, n);
  return out;
}

Pkey LoadPublicKey(const std::string& path) {
  std::string pem = ReadFile(path);
  std::unique_ptr<BIO, int (*)(BIO*)> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())), BIO_free);
  Pkey key(PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr));
  if (!key) {
    if (pem.find("PRIVATE KEY") != std::string::npos) {
      throw Error(path + " is a private key; trust its public half instead: "
                         "openssl ec -in KEY.pem -pubout -out pub.pem");
    }
    throw Error(path + " is not a PEM public key");
  }
  char group[64] = {0};
  size_t group_length = 0;
  bool p256 = EVP_PKEY_get_base_id(key.get()) == EVP_PKEY_EC &&
              EVP_PKEY_get_utf8_string_param(key.get(), OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                             &group_length) == 1 &&
              std::string(group) == "prime256v1";
  if (!p256) {
    throw Error(path + " is not an EC P-256 key; artifacts are signed with EC P-256 (prime256v1) keys");
  }
  return key;
}

// sha256 hex of the key's DER SubjectPublicKeyInfo, as signing.key_id computes it.
std::string KeyId(EVP_PKEY* key) {
  unsigned char* der = nullptr;
  int length = i2d_PUBKEY(key, &der);
  if (length <= 0) throw Error("cannot encode the trusted key");
  std::string id = Sha256Hex(std::string(reinterpret_cast<char*>(der), length));
  OPENSSL_free(der);
  return id;
}

bool DecodeBase64(const std::string& text, std::vector<unsigned char>* out) {
  if (text.empty() || text.size() % 4 != 0) return false;
  out->resize(text.size() / 4 * 3);
  int n = EVP_DecodeBlock(out->data(), reinterpret_cast<const unsigned char*>(text.data()),
                          static_cast<int>(text.size()));
  if (n < 0) return false;
  size_t padding = (text.end()[-1] == '=') + (text.end()[-2] == '=');
  out->resize(n - padding);
  return true;
}

std::string Field(const tvm::ffi::Map<tvm::ffi::String, tvm::ffi::Any>& record, const char* name) {
  auto found = record.find(name);
  if (found == record.end()) return "";
  auto text = (*found).second.as<tvm::ffi::String>();
  return text ? std::string(*text) : "";
}

}  // namespace

std::string Sha256Hex(const std::string& bytes) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  if (EVP_Digest(bytes.data(), bytes.size(), digest, &length, EVP_sha256(), nullptr) != 1) {
    throw Error("OpenSSL cannot compute sha256");
  }
  return Hex(digest, length);
}

void VerifySignature(const std::string& artifact, const std::string& manifest,
                     const std::string& library_name, const std::string& library_sha256,
                     const std::string* signature_json, const std::string& trusted_key) {
  Pkey key = LoadPublicKey(trusted_key);
  std::string trusted_id = KeyId(key.get());
  if (signature_json == nullptr) {
    throw Error(artifact + " is not signed, and a trusted key is required (" + trusted_key +
                "); sign it with: penni-deploy sign ARTIFACT --key KEY.pem");
  }
  tvm::ffi::String parse_error;
  tvm::ffi::Any parsed = tvm::ffi::json::Parse(*signature_json, &parse_error);
  auto record = parsed.as<tvm::ffi::Map<tvm::ffi::String, tvm::ffi::Any>>();
  std::vector<unsigned char> der;
  if (!record || Field(*record, "format") != kFormat || Field(*record, "algorithm") != kAlgorithm ||
      !DecodeBase64(Field(*record, "signature"), &der)) {
    throw Error(artifact + ": " + kSignatureName + " is malformed or of an unknown kind; "
                "sign the artifact again with penni-deploy sign");
  }
  std::string message = std::string(kFormat) + "\nmanifest.json " + Sha256Hex(manifest) + "\n" +
                        library_name + " " + library_sha256 + "\n";
  std::unique_ptr<EVP_MD_CTX, MdCtxFree> ctx(EVP_MD_CTX_new());
  bool valid = ctx && EVP_DigestVerifyInit(ctx.get(), nullptr, EVP_sha256(), nullptr, key.get()) == 1 &&
               EVP_DigestVerify(ctx.get(), der.data(), der.size(),
                                reinterpret_cast<const unsigned char*>(message.data()), message.size()) == 1;
  if (valid) return;
  std::string signer = Field(*record, "key_id");
  if (signer != trusted_id) {
    throw Error(artifact + " is signed by another key (key id " + signer.substr(0, 16) +
                "…), not by the trusted key " + trusted_key + " (" + trusted_id.substr(0, 16) +
                "…); refusing to load it");
  }
  throw Error(artifact + ": the signature does not match the manifest and library (changed after "
              "signing); refusing to load it");
}

}  // namespace detail
}  // namespace penni
