// The old front end's behaviour, without React: for each tab, the file check and FileReader
// preview of handleFileChange, the default crop box of onImageLoad, the 160x160 canvas crop
// sent as a JPEG File of handleEnd, the request and error handling of handleAnalyze, and the
// fields each tab shows, formatted as its JSX formats them.
//
// Additions, for the tests only (the old page has none of them): data-state ("analyzing",
// "done") and data-status (the HTTP status) on each tab's <section>, data-render-error when
// showing a result threw (where React would have crashed the component).
'use strict';

const API = new URLSearchParams(window.location.search).get('api');

function setupTab(root, render) {
  const part = (role) => root.querySelector(`[data-role="${role}"]`);
  const img = part('original');
  const cropped = part('cropped');
  const canvas = part('canvas');
  let image = null;
  let cropBox = { x: 0, y: 0, width: 0, height: 0 };

  const show = (element, visible) => element.classList.toggle('hidden', !visible);
  const setError = (message) => {
    part('error').textContent = message || '';
    show(part('error'), Boolean(message));
  };
  const setResult = (data) => {
    show(part('result'), false);
    if (data === null) return;
    try {
      render(part, data);
      show(part('result'), true);
    } catch (err) {
      root.dataset.renderError = String(err);
    }
  };

  // handleFileChange
  part('file').addEventListener('change', (event) => {
    const file = event.target.files[0];
    if (file && (file.type === 'image/jpeg' || file.type === 'image/png')) {
      const reader = new FileReader();
      reader.onloadend = () => {
        image = file;
        img.src = reader.result;
        show(cropped, false);
        cropBox = { x: 0, y: 0, width: 0, height: 0 };
        setResult(null);
        show(part('editor'), true);
      };
      reader.readAsDataURL(file);
      setError(null);
    } else {
      setError('Please select a valid JPEG or PNG image.');
    }
  });

  // onImageLoad: a centred square, half the shorter side, in displayed pixels.
  img.addEventListener('load', () => {
    const { width, height } = img;
    const size = Math.min(width, height) / 2;
    cropBox = { x: (width - size) / 2, y: (height - size) / 2, width: size, height: size };
    part('crop-x').value = cropBox.x;
    part('crop-y').value = cropBox.y;
    part('crop-size').value = cropBox.width;
    root.dataset.imageLoaded = 'true';
  });

  // handleEnd: the box the user dragged (here: typed), drawn onto a 160x160 canvas.
  part('crop').addEventListener('click', () => {
    const size = Number(part('crop-size').value);
    cropBox = { x: Number(part('crop-x').value), y: Number(part('crop-y').value), width: size, height: size };
    if (!canvas || !img || cropBox.width <= 0) return;
    canvas.width = 160;
    canvas.height = 160;
    const ctx = canvas.getContext('2d');
    ctx.drawImage(
      img,
      cropBox.x * (img.naturalWidth / img.width),
      cropBox.y * (img.naturalHeight / img.height),
      cropBox.width * (img.naturalWidth / img.width),
      cropBox.height * (img.naturalHeight / img.height),
      0, 0, 160, 160,
    );
    canvas.toBlob((blob) => {
      if (blob) {
        image = new File([blob], 'cropped.jpg', { type: 'image/jpeg' });
        cropped.src = canvas.toDataURL('image/jpeg');
        show(cropped, true);
        part('analyze').disabled = false;
        root.dataset.cropped = 'true';
      }
    }, 'image/jpeg');
  });

  // handleAnalyze
  const analyze = async () => {
    if (!image) return;
    let result = null;
    root.dataset.state = 'analyzing';
    delete root.dataset.status;
    delete root.dataset.renderError;
    try {
      setError(null);
      const formData = new FormData();
      formData.append('file', image);
      const response = await fetch(API + root.dataset.route, {
        method: 'POST',
        body: formData,
      });
      root.dataset.status = String(response.status);
      if (!response.ok) throw new Error('Analysis failed');
      result = await response.json();
    } catch (err) {
      setError(err.message);
    } finally {
      root.dataset.state = 'done';
    }
    // React renders after setResult, outside handleAnalyze's try: a missing field crashes the
    // view instead of showing an error.
    setResult(result);
  };
  part('direct').addEventListener('click', analyze);
  part('analyze').addEventListener('click', analyze);
}

// The class the old page gives a badge: red only for exactly `redWhen`.
function badgeClass(value, redWhen) {
  return `badge ${value === redWhen ? 'bg-red-900 text-red-200' : 'bg-green-900 text-green-200'}`;
}

function renderDetect(part, result) {
  part('prediction').textContent = result.prediction;
  part('confidence').textContent = `${(result.confidence * 100).toFixed(2)}%`;
}

function renderAugmented(part, result) {
  part('consensus').textContent = result.consensus_prediction;
  part('consensus-badge').className = badgeClass(result.consensus_prediction, 'FAKE');
  part('average-confidence').textContent = `${(result.average_confidence * 100).toFixed(2)}%`;
  part('original-prediction').textContent = result.original_prediction.prediction;
  part('original-confidence').textContent = `${(result.original_prediction.confidence * 100).toFixed(2)}%`;
  const rows = result.augmented_predictions.map((pred) => {
    const row = document.createElement('div');
    row.dataset.role = 'variant';
    const name = document.createElement('p');
    name.className = 'label capitalize';
    name.dataset.role = 'variant-name';
    name.textContent = pred.augmentation_type.replace('_', ' ');
    const badge = document.createElement('span');
    badge.className = badgeClass(pred.prediction, 'fake');
    badge.dataset.role = 'variant-badge';
    badge.textContent = pred.prediction;
    const confidence = document.createElement('p');
    confidence.className = 'value';
    confidence.dataset.role = 'variant-confidence';
    confidence.textContent = `${(pred.confidence * 100).toFixed(2)}% confidence`;
    row.append(name, badge, confidence);
    return row;
  });
  part('variants').replaceChildren(...rows);
  part('processing-time').textContent = `${result.processing_time.toFixed(3)}s`;
  part('input-shape').textContent = result.debug_info.input_size.join(' × ');
  part('below-threshold').textContent =
    `${result.debug_info.predictions_below_threshold} / ${result.debug_info.total_predictions}`;
  part('threshold').textContent = `${result.debug_info.threshold * 100}%`;
}

setupTab(document.getElementById('general'), renderDetect);
setupTab(document.getElementById('augmented'), renderAugmented);
